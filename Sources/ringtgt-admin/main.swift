// ringtgt-admin: tgt-admin for ringtgtd. Everything but the I/O lives in Target/Control (RingtgtAdmin).

#if canImport(Glibc)
import Glibc
#endif
import Target

var environment: [String: String] = [:]
if let value = getenv(ControlEndpoint.environmentVariable) {
    environment[ControlEndpoint.environmentVariable] = String(cString: value)
}
let output = RingtgtAdmin.run(Array(CommandLine.arguments.dropFirst()), environment: environment) { request, path in
    switch ControlClient.send(request, to: path) {
    case .success(let response):
        return response
    case .failure(let failure):
        return AdminResponse(exitCode: failure.errorNumber == 0 ? 1 : failure.errorNumber,
                             stderr: "\(RingtgtAdmin.programName): \(failure.message)\n")
    }
}
if !output.stdout.isEmpty { fputs(output.stdout, stdout) }
if !output.stderr.isEmpty { fputs(output.stderr, stderr) }
exit(output.exitCode)
