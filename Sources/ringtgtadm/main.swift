// ringtgtadm: tgtadm's command line, sent to ringtgtd's control socket. Parsing and every message live
// in Target/Control (TgtadmCommandLine), so they are unit-tested; this file only does the I/O.

#if canImport(Glibc)
import Glibc
#endif
import Target

func emit(_ text: String, to stream: UnsafeMutablePointer<FILE>) {
    if !text.isEmpty { fputs(text, stream) }
}

let environment: [String: String] = {
    var result: [String: String] = [:]
    if let value = getenv(ControlEndpoint.environmentVariable) {
        result[ControlEndpoint.environmentVariable] = String(cString: value)
    }
    return result
}()

switch TgtadmCommandLine.parse(Array(CommandLine.arguments.dropFirst()), environment: environment) {
case .print(let text):
    emit(text, to: stdout)
    exit(0)
case .usageError(let text, let code):
    emit(text, to: stderr)
    exit(code)
case .send(let request, let path):
    switch ControlClient.send(request, to: path) {
    case .success(let response):
        emit(response.stdout, to: stdout)
        emit(response.stderr, to: stderr)
        // Like tgtadm, `--op delete --mode system` returns once the daemon is gone, not when it agreed to go.
        if response.exitCode == 0 && request.mode == .system && request.op == .delete
            && !ControlClient.waitUntilGone(path) {
            emit("\(AdminProgram.name): ringtgtd still runs \(ControlClient.shutdownWaitSeconds) s after "
                 + "--op delete --mode system\n", to: stderr)
            exit(ETIMEDOUT)
        }
        exit(response.exitCode)
    case .failure(let failure):
        emit("\(AdminProgram.name): \(failure.message)\n", to: stderr)
        exit(failure.errorNumber == 0 ? 1 : failure.errorNumber)
    }
}
