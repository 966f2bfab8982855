import Foundation
import TOMLKit

/// The job file parsed into plain located fields, table by table, before any decoding; `--set`
/// overrides are put in here.
struct Document: Sendable {
  let file: String
  let map: SourceMap
  private var tables: [String: [String: Field]] = [:]
  /// `[[models]]` entries, their keys flattened (`model.d_model`).
  private var models: [[String: Field]] = []
  /// Where each sweep key came in, for keys from `--set` (no line): they follow the file's keys.
  private var sweepOrder: [String: Int] = [:]

  init(source: String, file: String) throws {
    self.file = file
    let map = SourceMap(source: source)
    self.map = map
    let root: Raw
    try TOMLGuard.check(source, file: file)
    do {
      root = Raw(try TOMLTable(string: source))
    } catch let e as TOMLParseError {
      throw ConfigError(
        file: file, line: e.source.begin.line,
        message: "TOML syntax error (column \(e.source.begin.column)): \(e.description)")
    }
    guard case .table(let top) = root else { return }
    let topLine = { (k: String) in map.headerLine(table: k) ?? map.line(table: "", key: k) }
    let unknown = top.keys.filter { !Keys.tables.contains($0) }.sorted {
      (topLine($0) ?? .max, $0) < (topLine($1) ?? .max, $1)
    }
    if let k = unknown.first {
      let what: String
      if case .table = top[k]! {
        what = "unknown table [\(k)]"
      } else {
        what = "unknown key \"\(k)\" outside any table"
      }
      throw ConfigError(
        file: file, line: topLine(k), message: "\(what); valid tables: \(Keys.tables.joined(separator: ", "))")
    }
    for (name, value) in top {
      if name == "models" {
        guard case .array(let entries) = value else {
          throw ConfigError(
            file: file, line: topLine(name),
            message: "models must be an array of tables ([[models]]), found \(value.kindName)")
        }
        for (i, entry) in entries.enumerated() {
          guard case .table(let t) = entry else {
            throw ConfigError(
              file: file, line: topLine(name),
              message: "models must be an array of tables ([[models]]), found an element that is \(entry.kindName)")
          }
          var fields: [String: Field] = [:]
          for (k, v) in Raw.flatten(t) {
            fields[k] = Field(value: v, line: map.line(table: "models", index: i, key: k))
          }
          models.append(fields)
        }
        continue
      }
      guard case .table(let t) = value else {
        throw ConfigError(
          file: file, line: topLine(name), message: "\(name) must be a table ([\(name)]), found \(value.kindName)")
      }
      let pairs = name == "sweep" ? Raw.flatten(t) : t.map { ($0.key, $0.value) }
      var fields: [String: Field] = [:]
      for (k, v) in pairs { fields[k] = Field(value: v, line: map.line(table: name, key: k)) }
      tables[name] = fields
    }
  }

  func section(_ name: String) -> Section {
    Section(name: name, file: file, fields: tables[name] ?? [:], headerLine: map.headerLine(table: name))
  }

  /// Puts one `--set table.key=value` into the document, or throws an error naming `--set`.
  mutating func apply(override o: String) throws {
    func fail(_ why: String) -> ConfigError { ConfigError(file: file, line: nil, message: "--set \(o): \(why)") }
    guard let eq = o.firstIndex(of: "=") else { throw fail("expected table.key=value") }
    let path = o[..<eq].trimmingCharacters(in: .whitespaces)
    let text = o[o.index(after: eq)...].trimmingCharacters(in: .whitespaces)
    guard let dot = path.firstIndex(of: ".") else { throw fail("expected table.key=value") }
    let table = String(path[..<dot]), key = String(path[path.index(after: dot)...])
    guard !table.isEmpty, !key.isEmpty else { throw fail("expected table.key=value") }
    guard Keys.tables.contains(table), table != "models" else {
      throw fail(
        "unknown table [\(table)]; --set tables: \(Keys.tables.filter { $0 != "models" }.joined(separator: ", "))")
    }
    let valid: [String]? = [
      "job": Keys.job, "cluster": Keys.cluster, "data": Keys.data, "model": Keys.model, "train": Keys.train,
      "plugins": Keys.plugins, "sweep": Keys.memberKeys,
    ][table]
    if let valid, !valid.contains(key) {
      throw fail("unknown key \"\(key)\" in [\(table)]; valid keys: \(valid.joined(separator: ", "))")
    }
    guard !text.isEmpty else { throw fail("missing value after '='") }
    var value = Raw.string(text)
    if let t = try? TOMLTable(string: "v = " + text), t.count == 1, let v = t["v"] { value = Raw(v) }
    tables[table, default: [:]][key] = Field(value: value, line: nil, origin: "from --set \(o)")
    if table == "sweep", sweepOrder[key] == nil { sweepOrder[key] = sweepOrder.count }
  }

  /// The `[sweep]` axes in the order written; `--set` ones last.
  func sweepAxes(jobDir: String) throws -> [(axis: SweepAxis, line: Int?)] {
    let s = section("sweep")
    let keys = s.fields.keys.sorted {
      (s.fields[$0]!.line ?? .max, sweepOrder[$0] ?? 0, $0) < (s.fields[$1]!.line ?? .max, sweepOrder[$1] ?? 0, $1)
    }
    return try keys.map { key in
      let f = s.fields[key]!
      guard Keys.memberKeys.contains(key) else {
        throw s.error(
          key,
          "sweep key \"\(key)\" is unknown; a sweep varies model.<key> or train.<key>: \(Keys.memberKeys.joined(separator: ", "))"
        )
      }
      guard case .array(let list) = f.value else {
        throw s.error(key, "sweep key \"\(key)\" must be a list of values, found \(f.value.kindName)")
      }
      guard !list.isEmpty else { throw s.error(key, "sweep key \"\(key)\" is an empty list; give at least one value") }
      let values = try list.map { v -> ConfigValue in
        guard let c = v.configValue else {
          throw s.error(key, "sweep key \"\(key)\": values must be plain values, found \(v.kindName)")
        }
        return resolved(key, c, jobDir)
      }
      return (SweepAxis(key: key, values: values), f.line)
    }
  }

  /// Each `[[models]]` entry as overrides in the order written, with each key's line.
  func modelEntries(jobDir: String) throws -> [(overrides: [Override], lines: [Int?])] {
    try models.enumerated().map { i, fields in
      let s = Section(name: "models", file: file, fields: fields, headerLine: map.headerLine(table: "models", index: i))
      let keys = fields.keys.sorted { (fields[$0]!.line ?? .max, $0) < (fields[$1]!.line ?? .max, $1) }
      var out: [Override] = []
      for key in keys {
        let f = fields[key]!
        guard Keys.memberKeys.contains(key) else {
          throw s.error(
            key,
            "unknown key \"\(key)\" in [[models]] entry \(i + 1); valid keys: \(Keys.memberKeys.joined(separator: ", "))"
          )
        }
        guard let c = f.value.configValue else {
          throw s.error(key, "[[models]] entry \(i + 1): \(key) must be a plain value, found \(f.value.kindName)")
        }
        out.append(Override(key: key, value: resolved(key, c, jobDir)))
      }
      return (out, keys.map { fields[$0]!.line ?? s.headerLine })
    }
  }

  /// Path-valued overrides (`model.init`) made absolute, so that they mean the same from any folder.
  private func resolved(_ key: String, _ v: ConfigValue, _ jobDir: String) -> ConfigValue {
    guard key == "model.init", case .string(let p) = v else { return v }
    return .string(resolvePath(p, relativeTo: jobDir))
  }
}
