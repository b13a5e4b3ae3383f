// Shell completion for ringtgtadm. ringtgtadm parses tgtadm's getopt-style line itself (TgtadmCommandLine),
// so swift-argument-parser never sees `--generate-completion-script`; this command exists only so the
// parser can describe TgtadmOptions (with their completion values) to bash, zsh and fish.

import ArgumentParser

struct TgtadmCompletionCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: AdminProgram.name)
    @OptionGroup var options: TgtadmOptions
}

extension TgtadmCommandLine {
    /// The option swift-argument-parser's own programs (ringtgtd) take for the same purpose.
    static let completionOption = "--generate-completion-script"

    /// `--generate-completion-script SHELL` (or `=SHELL`) alone on the line: the script for bash, zsh or fish.
    /// nil when the line asks for something else.
    static func completion(_ arguments: [String]) -> TgtadmInvocation? {
        guard let first = arguments.first, first == completionOption || first.hasPrefix(completionOption + "=")
        else { return nil }
        let shellName: String?
        if first == completionOption {
            shellName = arguments.count == 2 ? arguments[1] : nil
        } else {
            shellName = arguments.count == 1 ? String(first.dropFirst(completionOption.count + 1)) : nil
        }
        let shells = CompletionShell.allCases.map(\.rawValue).joined(separator: ", ")
        guard let shellName, let shell = CompletionShell(rawValue: shellName) else {
            return usageFailure("\(completionOption) takes one of: \(shells)")
        }
        return .print(TgtadmCompletionCommand.completionScript(for: shell))
    }
}
