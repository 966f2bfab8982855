import TOMLKit

/// A TOML value converted at once into a plain Sendable tree (TOMLKit's types are not Sendable).
indirect enum Raw: Sendable, Equatable {
  case int(Int), double(Double), string(String), bool(Bool), array([Raw]), table([String: Raw])
  /// Dates and times: no key of a job file takes one; kept only to say what was found.
  case other(String)

  init(_ v: TOMLValueConvertible) {
    switch v.type {
    case .int: self = .int(v.int ?? 0)
    case .double: self = .double(v.double ?? 0)
    case .string: self = .string(v.string ?? "")
    case .bool: self = .bool(v.bool ?? false)
    case .array: self = .array((v.array.map { Array($0) } ?? []).map { Raw($0) })
    case .table:
      var out: [String: Raw] = [:]
      if let t = v.table { for (k, x) in t { out[k] = Raw(x) } }
      self = .table(out)
    default: self = .other(v.type.description)
    }
  }

  init(_ c: ConfigValue) {
    switch c {
    case .int(let v): self = .int(v)
    case .double(let v): self = .double(v)
    case .string(let v): self = .string(v)
    case .bool(let v): self = .bool(v)
    case .array(let a): self = .array(a.map { Raw($0) })
    }
  }

  /// The value as a ConfigValue; nil for tables, dates and arrays holding them.
  var configValue: ConfigValue? {
    switch self {
    case .int(let v): return .int(v)
    case .double(let v): return .double(v)
    case .string(let v): return .string(v)
    case .bool(let v): return .bool(v)
    case .array(let a):
      var out: [ConfigValue] = []
      for x in a { guard let c = x.configValue else { return nil }; out.append(c) }
      return .array(out)
    case .table, .other: return nil
    }
  }

  /// "an integer", "a string", ... for "expected X, found Y" messages.
  var kindName: String {
    switch self {
    case .int: return "an integer"
    case .double: return "a floating-point number"
    case .string: return "a string"
    case .bool: return "a boolean"
    case .array: return "an array"
    case .table: return "a table"
    case .other(let t): return "a \(t)"
    }
  }

  /// The value written as TOML, for messages.
  var shown: String {
    if let c = configValue { return c.description }
    return kindName
  }

  /// A table's nested tables flattened into dotted keys: `{train = {lr = [..]}}` -> `train.lr`.
  static func flatten(_ table: [String: Raw], prefix: String = "") -> [(String, Raw)] {
    var out: [(String, Raw)] = []
    for (k, v) in table {
      if case .table(let t) = v, !t.isEmpty {
        out += flatten(t, prefix: prefix + k + ".")
      } else {
        out.append((prefix + k, v))
      }
    }
    return out
  }
}

/// One key's value and where it came from: a line of the file, and for a value that did not come from
/// the base table, a note (`from --set train.lr=0.1`, `in model m002 of [sweep]`) added to messages.
struct Field: Sendable {
  var value: Raw
  var line: Int?
  var origin: String?
}

/// One table of the job file being decoded: hands out typed values and makes located errors.
struct Section: Sendable {
  let name: String
  let file: String
  var fields: [String: Field]
  var headerLine: Int?

  func error(_ key: String?, _ message: String) -> ConfigError {
    if let key, let f = fields[key] {
      return ConfigError(file: file, line: f.line, message: message + (f.origin.map { " (\($0))" } ?? ""))
    }
    return ConfigError(file: file, line: headerLine, message: message)
  }

  /// An error about several keys together: located at the first that did not come from the base table.
  func error(keys: [String], _ message: String) -> ConfigError {
    let key = keys.first(where: { fields[$0]?.origin != nil }) ?? keys.first(where: { fields[$0] != nil })
    return error(key, message)
  }

  func checkKeys(_ valid: [String]) throws {
    let unknown = fields.keys.filter { !valid.contains($0) }
      .sorted { (fields[$0]?.line ?? Int.max, $0) < (fields[$1]?.line ?? Int.max, $1) }
    if let k = unknown.first {
      throw error(k, "unknown key \"\(k)\" in [\(name)]; valid keys: \(valid.joined(separator: ", "))")
    }
  }

  func missing(_ key: String) -> ConfigError {
    error(nil, "missing required key \"\(key)\" in [\(name)]")
  }

  private func value(_ key: String, required: Bool) throws -> Raw? {
    if let f = fields[key] { return f.value }
    if required { throw missing(key) }
    return nil
  }

  private func wrongType(_ key: String, _ expected: String, _ found: Raw) -> ConfigError {
    error(key, "\(name).\(key): expected \(expected), found \(found.kindName) (\(found.shown))")
  }

  func int(_ key: String, _ d: Int? = nil) throws -> Int {
    if let v = try optionalInt(key) { return v }
    if let d { return d }
    throw missing(key)
  }

  func optionalInt(_ key: String) throws -> Int? {
    guard let v = try value(key, required: false) else { return nil }
    guard case .int(let i) = v else { throw wrongType(key, "an integer", v) }
    return i
  }

  func double(_ key: String, _ d: Double) throws -> Double {
    guard let v = try value(key, required: false) else { return d }
    switch v {
    case .double(let x): return x
    case .int(let i): return Double(i)
    default: throw wrongType(key, "a number", v)
    }
  }

  func bool(_ key: String, _ d: Bool) throws -> Bool {
    guard let v = try value(key, required: false) else { return d }
    guard case .bool(let b) = v else { throw wrongType(key, "a boolean (true or false)", v) }
    return b
  }

  func optionalString(_ key: String) throws -> String? {
    guard let v = try value(key, required: false) else { return nil }
    guard case .string(let s) = v else { throw wrongType(key, "a string", v) }
    return s
  }

  func string(_ key: String, _ d: String? = nil, oneOf choices: [String]? = nil) throws -> String {
    guard let s = try optionalString(key) ?? d else { throw missing(key) }
    if let choices, !choices.contains(s) {
      let list = choices.map { "\"\($0)\"" }.joined(separator: ", ")
      throw error(key, "\(name).\(key) = \(tomlString(s)) is not valid; choose one of \(list)")
    }
    return s
  }

  /// One of a closed set of strings (`T`'s raw values), as its case; `d` when the key is absent.
  func choice<T: RawRepresentable & CaseIterable>(_ key: String, _ d: T? = nil) throws -> T where T.RawValue == String {
    let s = try string(key, d?.rawValue, oneOf: T.allCases.map(\.rawValue))
    guard let value = T(rawValue: s) else { throw error(key, "\(name).\(key) = \(tomlString(s)) is not valid") }
    return value
  }

  func list<T>(_ key: String, _ d: [T], _ what: String, _ element: (Raw) -> T?) throws -> [T] {
    guard let v = try value(key, required: false) else { return d }
    guard case .array(let a) = v else { throw wrongType(key, "an array of \(what)", v) }
    var out: [T] = []
    for x in a {
      guard let e = element(x) else {
        throw error(
          key, "\(name).\(key): expected an array of \(what), found an element that is \(x.kindName) (\(x.shown))")
      }
      out.append(e)
    }
    return out
  }

  func ints(_ key: String, _ d: [Int]) throws -> [Int] {
    try list(key, d, "integers") {
      if case .int(let i) = $0 { return i }; return nil
    }
  }

  func doubles(_ key: String, _ d: [Double]) throws -> [Double] {
    try list(key, d, "numbers") {
      switch $0 {
      case .double(let x): return x
      case .int(let i): return Double(i)
      default: return nil
      }
    }
  }

  func strings(_ key: String, _ d: [String]) throws -> [String] {
    try list(key, d, "strings") {
      if case .string(let s) = $0 { return s }; return nil
    }
  }

  /// Throws "`table.key` must be <rule> (got <value>)" unless `ok`.
  func check(_ ok: Bool, _ key: String, _ rule: String) throws {
    guard !ok else { return }
    let got = fields[key].map { " (got \($0.value.shown))" } ?? ""
    throw error(key, "\(name).\(key) must be \(rule)\(got)")
  }
}
