// The modules this target tests, for all of its files (an `@_exported` import is seen module-wide). A file
// that needs a module's internals adds its own `@testable import` of that module.
@_exported import Floor
@_exported import URing
@_exported import ISCSIWire
@_exported import Store
@_exported import SCSI
@_exported import ISCSI
@_exported import NBD
@_exported import Reactor
