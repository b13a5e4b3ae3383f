// Target's files (ISCSI/, and SCSI/ and NBD/ for the endian helpers) and its clients use ISCSIWire's
// vocabulary as if it were Target's own; one re-export here instead of an import in each of them.
@_exported import ISCSIWire
