// ringtgt-fuzz --target=NAME [libFuzzer flags] [corpus dirs]
// Built by `fuzz/run` with -sanitize=fuzzer (FUZZING defined), it hands the arguments to libFuzzer; libFuzzer
// ignores flags that start with "--", so the selector survives the re-executions of -merge and -fork. Built
// plainly (swift build), it runs each file or directory entry given once through the target: a corpus replay.

import FuzzTargets
#if canImport(Glibc)
import Glibc
#endif

#if FUZZING
@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(_ argc: UnsafeMutablePointer<CInt>,
                         _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
                         _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt) -> CInt

nonisolated(unsafe) var selected: FuzzTarget! = nil

// The same entry points for libFuzzer's own main: SwiftPM aliases `main` to this module's @main, and libFuzzer's
// archive brings its own (linked with --allow-multiple-definition, see fuzz/run); whichever the linker keeps,
// the selector is read here and the input runs below.
@_cdecl("LLVMFuzzerInitialize")
public func fuzzerInitialize(_ argc: UnsafeMutablePointer<CInt>,
                             _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>) -> CInt {
    if selected == nil, let list = argv.pointee {
        let args = (0 ..< Int(argc.pointee)).compactMap { list[$0].map { String(cString: $0) } }
        selected = FuzzMain.target(args)
    }
    return 0
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzerTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    selected.run(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}
#endif

@main struct FuzzMain {
    /// The target `--target=NAME` names; exits with the usage when there is none.
    static func target(_ args: [String]) -> FuzzTarget {
        guard let name = args.first(where: { $0.hasPrefix("--target=") })?.dropFirst("--target=".count),
              let target = FuzzTargets.named(String(name)) else {
            var usage = "usage: ringtgt-fuzz --target=NAME [libFuzzer flags | files and directories]\ntargets:\n"
            for t in FuzzTargets.all { usage += "  \(t.name): \(t.summary)\n" }
            fputs(usage, stderr)
            exit(2)
        }
        return target
    }

    static func main() {
        let args = CommandLine.arguments
        let target = target(args)
#if FUZZING
        selected = target
        var argc = CommandLine.argc
        var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
        exit(LLVMFuzzerRunDriver(&argc, &argv) { data, size in fuzzerTestOneInput(data, size) })
#else
        var count = 0
        for path in args.dropFirst() where !path.hasPrefix("-") {
            for file in Replay.files(path) {
                guard let bytes = Replay.read(file) else {
                    fputs("cannot read \(file)\n", stderr)
                    exit(1)
                }
                bytes.withUnsafeBytes { target.run($0) }
                count += 1
            }
        }
        print("\(target.name): \(count) inputs replayed")
#endif
    }
}
