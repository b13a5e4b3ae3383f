// Target's files and its clients (the daemon, the tools, the tests, perf/loadgen) use the floor's values and
// the ring, the store, SCSI, iSCSI, NBD and reactor layers as if they were Target's own; one re-export here instead of an import in each of them.
@_exported import Floor
@_exported import URing
@_exported import Store
@_exported import SCSI
@_exported import ISCSI
@_exported import NBD
@_exported import Reactor
