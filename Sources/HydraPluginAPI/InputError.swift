/// Bad input from the user: a config, a data file, a checkpoint, a plugin. The command-line tool
/// prints the message and exits with code 2; everything else that goes wrong exits with 1.
///
/// The message names the file and, where there is one, the line (or row and column):
/// `data/digits.csv:12: column 3: "x1" is not a number`.
public struct InputError: Error, CustomStringConvertible, Sendable, Equatable {
  public let file: String
  public let line: Int?
  public let message: String

  public init(file: String, line: Int? = nil, _ message: String) {
    self.file = file
    self.line = line
    self.message = message
  }

  public init(file: String, line: Int?, message: String) {
    self.init(file: file, line: line, message)
  }

  public var description: String {
    if let line { return "\(file):\(line): \(message)" }
    return "\(file): \(message)"
  }
}

/// A file that could not be written (a full disk, no permission): the machine's problem, not the
/// user's input, so the tool exits with 1. The message names the file.
public struct WriteError: Error, CustomStringConvertible, Sendable {
  public let file: String
  public let message: String

  public init(file: String, _ message: String) {
    self.file = file
    self.message = message
  }

  public var description: String { "\(file): \(message)" }
}

/// A problem with a job file (or a `--set` override): the same bad input as any other file's.
public typealias ConfigError = InputError
