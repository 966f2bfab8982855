/// A problem with a job file (or a `--set` override), located by file and, where known, line.
///
/// `description` reads `path/job.toml:12: message`, or `path/job.toml: message` when no line applies
/// (a missing table, a `--set` value). The command-line tool prints it and exits with status 2.
public struct ConfigError: Error, CustomStringConvertible, Sendable, Equatable {
  public let file: String
  public let line: Int?
  public let message: String

  public init(file: String, line: Int?, message: String) {
    self.file = file
    self.line = line
    self.message = message
  }

  public var description: String {
    if let line { return "\(file):\(line): \(message)" }
    return "\(file): \(message)"
  }
}

/// The plugin names registered with the runtime, against which `job.toml` names are checked.
public struct KnownPlugins: Sendable, Equatable {
  public var backends: [String]
  public var kernels: [String]
  public var partitioners: [String]
  public var schedulers: [String]
  /// What a job without `[partitioner] name` / `[scheduler] name` gets.
  public var defaultPartitioner: String
  public var defaultScheduler: String

  public init(
    backends: [String], kernels: [String], partitioners: [String], schedulers: [String],
    defaultPartitioner: String = "balanced", defaultScheduler: String = "lrtf"
  ) {
    self.backends = backends
    self.kernels = kernels
    self.partitioners = partitioners
    self.schedulers = schedulers
    self.defaultPartitioner = defaultPartitioner
    self.defaultScheduler = defaultScheduler
  }
}

/// A plain TOML value as it appears in a sweep, a `[[models]]` entry, or a plugin's options.
///
/// `description` is the value written as a TOML literal (strings quoted and escaped, doubles in
/// their shortest round-tripping form), so that writing it back and reading it gives an equal value.
public enum ConfigValue: Sendable, Equatable, CustomStringConvertible {
  case int(Int)
  case double(Double)
  case string(String)
  case bool(Bool)
  case array([ConfigValue])

  public var description: String {
    switch self {
    case .int(let v): return String(v)
    case .double(let v): return tomlDouble(v)
    case .string(let s): return tomlString(s)
    case .bool(let b): return b ? "true" : "false"
    case .array(let a): return "[" + a.map(\.description).joined(separator: ", ") + "]"
    }
  }
}

/// A double as a TOML float literal that reads back bit-for-bit (Swift prints the shortest such form).
func tomlDouble(_ v: Double) -> String {
  if v.isNaN { return "nan" }
  if v.isInfinite { return v < 0 ? "-inf" : "inf" }
  return "\(v)"  // e.g. 0.001, 1e-08, 1.0, 5e+22: all valid TOML floats
}

/// A TOML basic string literal.
func tomlString(_ s: String) -> String {
  var out = "\""
  for u in s.unicodeScalars {
    switch u {
    case "\"": out += "\\\""
    case "\\": out += "\\\\"
    case "\n": out += "\\n"
    case "\t": out += "\\t"
    case "\r": out += "\\r"
    default:
      if u.value < 0x20 || u.value == 0x7F {
        let hex = String(u.value, radix: 16, uppercase: true)
        out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
      } else {
        out.unicodeScalars.append(u)
      }
    }
  }
  return out + "\""
}

/// A TOML key: bare if it can be, otherwise quoted.
func tomlKey(_ k: String) -> String {
  let bare =
    !k.isEmpty
    && k.unicodeScalars.allSatisfy {
      ("a"..."z").contains($0) || ("A"..."Z").contains($0) || ("0"..."9").contains($0) || $0 == "_" || $0 == "-"
    }
  return bare ? k : tomlString(k)
}
