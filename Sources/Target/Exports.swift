// Target's files and its clients (the daemon, the tools, the tests, perf/loadgen) use every module below the
// control layer as if it were Target's own: the wire vocabulary, the floor, the ring, and the store, SCSI,
// iSCSI, NBD and reactor layers. One re-export here instead of an import in each of them.
@_exported import ISCSIWire
@_exported import Floor
@_exported import URing
@_exported import Store
@_exported import SCSI
@_exported import ISCSI
@_exported import NBD
@_exported import Reactor
