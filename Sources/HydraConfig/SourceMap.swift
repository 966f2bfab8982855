import Foundation

/// Where keys and table headers are in a job file's text: TOMLKit gives no line numbers for values.
///
/// A small line scanner, not a TOML parser: it follows `[table]` / `[[array]]` headers and records
/// every line that starts with a key (`key =`, `a.b =`, `"a.b" =`) under its full dotted path, e.g.
/// `train.lr`, `sweep.train.lr` (whether written as `"train.lr"` or as `train.lr`), or
/// `models.model.d_model` in the third `[[models]]` entry (index 2). Lines inside multi-line strings
/// are skipped. Its answers are used for messages only.
struct SourceMap: Sendable {
  struct Header: Sendable { var path: [String]; var index: Int?; var line: Int }
  struct Assignment: Sendable { var path: [String]; var index: Int?; var line: Int }

  private(set) var headers: [Header] = []
  private(set) var assignments: [Assignment] = []

  init(source: String) {
    var current: [String] = []
    var currentIndex: Int? = nil
    var arrayCounts: [String: Int] = [:]
    var inMultiline: Substring? = nil
    for (n, rawLine) in source.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
      let line = n + 1
      if let delimiter = inMultiline {
        if rawLine.components(separatedBy: delimiter).count % 2 == 0 { inMultiline = nil }
        continue
      }
      let text = rawLine.drop(while: { $0 == " " || $0 == "\t" })
      if text.hasPrefix("[") {
        let isArray = text.hasPrefix("[[")
        guard let (path, rest) = SourceMap.keyPath(text.dropFirst(isArray ? 2 : 1)),
          rest.drop(while: { $0 == " " || $0 == "\t" }).hasPrefix(isArray ? "]]" : "]")
        else { continue }
        current = SourceMap.flatten(path)
        if isArray {
          let name = current.joined(separator: ".")
          let k = arrayCounts[name, default: 0]
          arrayCounts[name] = k + 1
          currentIndex = k
        } else if let first = current.first, arrayCounts[first] != nil, current.count > 1 {
          currentIndex = arrayCounts[first]! - 1  // [models.model] belongs to the last [[models]]
        } else {
          currentIndex = nil
        }
        headers.append(Header(path: current, index: currentIndex, line: line))
        continue
      }
      guard let (path, rest) = SourceMap.keyPath(text) else { continue }
      let after = rest.drop(while: { $0 == " " || $0 == "\t" })
      guard after.hasPrefix("=") else { continue }
      assignments.append(Assignment(path: current + SourceMap.flatten(path), index: currentIndex, line: line))
      for delimiter in ["\"\"\"", "'''"] where after.components(separatedBy: delimiter).count % 2 == 0 {
        inMultiline = Substring(delimiter)
      }
    }
  }

  /// The line of `table.key` (key may be dotted), in the `index`-th entry of an array of tables; failing
  /// that, the line of the nearest enclosing key (an inline table) or sub-table header, then of the
  /// table's header.
  func line(table: String, index: Int? = nil, key: String) -> Int? {
    let tablePath = SourceMap.split(table)
    var path = tablePath + SourceMap.split(key)
    while path.count > tablePath.count {
      if let a = assignments.first(where: { $0.path == path && $0.index == index }) { return a.line }
      if let h = headers.first(where: { $0.path == path && $0.index == index }) { return h.line }
      path.removeLast()
    }
    return headerLine(table: table, index: index)
  }

  /// The line of `[table]`, or of the `index`-th `[[table]]`.
  func headerLine(table: String, index: Int? = nil) -> Int? {
    let path = SourceMap.split(table)
    return headers.first(where: { $0.path == path && $0.index == index })?.line
  }

  /// `["sweep", "train.lr"]` -> `["sweep", "train", "lr"]`: quoted dotted keys count as dotted.
  private static func flatten(_ parts: [String]) -> [String] { parts.flatMap { split($0) } }

  private static func split(_ dotted: String) -> [String] {
    dotted.isEmpty ? [] : dotted.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
  }

  /// Reads a dotted key (`a.b`, `"a.b"`, `'x'.y`) at the start of `s`; returns its parts and the rest.
  static func keyPath(_ s: Substring) -> ([String], Substring)? {
    var parts: [String] = []
    var rest = s
    while true {
      rest = rest.drop(while: { $0 == " " || $0 == "\t" })
      guard let c = rest.first else { return nil }
      if c == "\"" || c == "'" {
        var part = ""
        var i = rest.index(after: rest.startIndex)
        var closed = false
        while i < rest.endIndex {
          let ch = rest[i]
          if ch == c { closed = true; break }
          if ch == "\\" && c == "\"" {
            i = rest.index(after: i)
            guard i < rest.endIndex else { return nil }
          }
          part.append(rest[i])
          i = rest.index(after: i)
        }
        guard closed else { return nil }
        parts.append(part)
        rest = rest[rest.index(after: i)...]
      } else {
        let bare = rest.prefix(while: { $0.isLetter || $0.isNumber || $0 == "_" || $0 == "-" })
        guard !bare.isEmpty else { return nil }
        parts.append(String(bare))
        rest = rest.dropFirst(bare.count)
      }
      let afterPart = rest.drop(while: { $0 == " " || $0 == "\t" })
      if afterPart.hasPrefix(".") {
        rest = afterPart.dropFirst()
      } else {
        return (parts, rest)
      }
    }
  }
}
