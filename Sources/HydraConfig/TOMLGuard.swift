/// What the TOML parser is never given: its C++ side (toml++) recurses once per dotted key part and
/// per nested array or inline table, and a key of 50,000 parts overflows the stack (a crash, not an
/// error). A job file needs neither: this scan refuses, with the line, a file over 4 MiB, a key of
/// more than 64 parts, and nesting deeper than 64. Strings and comments are skipped as TOML reads
/// them, so a dot or a bracket inside a string counts for nothing.
enum TOMLGuard {
  static func check(_ source: String, file: String) throws {
    let bytes = Array(source.utf8)
    guard bytes.count <= Limits.fileBytes else {
      throw ConfigError(
        file: file, line: nil,
        message: "the job file is \(bytes.count) bytes; a job file may hold at most \(Limits.fileBytes)")
    }
    if let nul = bytes.firstIndex(of: 0) {
      let line = bytes[..<nul].filter { $0 == 0x0A }.count + 1
      throw ConfigError(file: file, line: line, message: "a NUL byte: a job file is text")
    }
    var line = 1
    var depth = 0
    var parts = 1
    var beforeEquals = true
    var i = 0
    func fail(_ message: String) -> ConfigError { ConfigError(file: file, line: line, message: message) }
    func at(_ j: Int) -> UInt8 { j < bytes.count ? bytes[j] : 0 }
    func isBare(_ b: UInt8) -> Bool {
      (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) || b == 0x5F || b == 0x2D
    }
    /// Where a key must start (after a table's `[`, a dotted key's `.`, an inline table's `{` or
    /// `,`): the parser asserts (aborts the process) when it finds anything but a bare key
    /// character or a quote there.
    func expectKey(after j: Int, closing: UInt8?) throws {
      var k = j
      while at(k) == 0x20 || at(k) == 0x09 { k += 1 }
      let b = at(k)
      if isBare(b) || b == UInt8(ascii: "\"") || b == UInt8(ascii: "'") { return }
      if let closing, b == closing { return }  // an empty inline table, or `[[`
      throw fail("a key is expected here (a letter, digit, _, - or a quoted name)")
    }
    /// Where a value must start (after `=`, or inside an array after `[` or `,`): the parser
    /// asserts when it finds a character that ends values there. In an array, blank lines and
    /// comments may come first, and `]` closes it.
    func expectValue(after j: Int, inArray: Bool) throws {
      var k = j
      while true {
        while at(k) == 0x20 || at(k) == 0x09 || (inArray && (at(k) == 0x0A || at(k) == 0x0D)) { k += 1 }
        if inArray && at(k) == UInt8(ascii: "#") {
          while k < bytes.count && at(k) != 0x0A { k += 1 }
          continue
        }
        break
      }
      let b = at(k)
      if inArray && b == UInt8(ascii: "]") { return }
      let ends: [UInt8] = [0, 0x0A, 0x0D, UInt8(ascii: "#"), UInt8(ascii: ","), UInt8(ascii: "]"), UInt8(ascii: "}")]
      if ends.contains(b) { throw fail("a value is expected here") }
    }
    // Start of a line, outside any value: a key, a table header, a comment or nothing.
    func lineStart(_ j: Int) throws {
      var k = j
      while at(k) == 0x20 || at(k) == 0x09 { k += 1 }
      let b = at(k)
      if b == 0 || b == 0x0A || b == 0x0D || b == UInt8(ascii: "#") || b == UInt8(ascii: "[") { return }
      try expectKey(after: k, closing: nil)
    }
    try lineStart(0)
    // Arrays and inline tables open around the current character; whether it is in a table header.
    var stack: [UInt8] = []
    var inHeader = false
    while i < bytes.count {
      let c = bytes[i]
      switch c {
      case UInt8(ascii: "\n"):
        line += 1
        if stack.isEmpty {
          parts = 1
          beforeEquals = true
          inHeader = false
          try lineStart(i + 1)
        }
      case UInt8(ascii: "#"):
        while i < bytes.count && bytes[i] != UInt8(ascii: "\n") { i += 1 }
        continue
      case UInt8(ascii: "\""), UInt8(ascii: "'"):
        let multi = at(i + 1) == c && at(i + 2) == c
        let quote = c
        i += multi ? 3 : 1
        while i < bytes.count {
          if bytes[i] == UInt8(ascii: "\\") && quote == UInt8(ascii: "\"") {
            // A NUL in a key cuts it short in the parser's C strings, and the lookup by the cut
            // name fails (a crash): no job file needs one.
            let escape = Array(bytes[(i + 1)..<min(bytes.count, i + 10)])
            if escape.starts(with: Array("u0000".utf8)) || escape.starts(with: Array("U00000000".utf8)) {
              throw fail("a NUL character (\\u0000) in a string")
            }
            i += 2
            continue
          }
          if bytes[i] == UInt8(ascii: "\n") {
            if !multi { break }  // an unterminated string: the parser says so
            line += 1
          }
          if bytes[i] == quote && (!multi || (at(i + 1) == quote && at(i + 2) == quote)) {
            i += multi ? 3 : 1
            break
          }
          i += 1
        }
        continue
      case UInt8(ascii: "["):
        if stack.isEmpty && beforeEquals && !inHeader {
          // A table header, `[name]` or `[[name]]`.
          inHeader = true
          if at(i + 1) == UInt8(ascii: "[") { i += 1 }
          try expectKey(after: i + 1, closing: nil)
        } else {
          stack.append(c)
          if stack.count > Limits.depth { throw fail("arrays or inline tables nested more than \(Limits.depth) deep") }
          try expectValue(after: i + 1, inArray: true)
        }
      case UInt8(ascii: "{"):
        stack.append(c)
        if stack.count > Limits.depth { throw fail("arrays or inline tables nested more than \(Limits.depth) deep") }
        beforeEquals = true
        parts = 1
        try expectKey(after: i + 1, closing: UInt8(ascii: "}"))
      case UInt8(ascii: "]"):
        if !stack.isEmpty { stack.removeLast() } else { inHeader = false }
      case UInt8(ascii: "}"):
        if !stack.isEmpty { stack.removeLast() }
        beforeEquals = false
      case UInt8(ascii: "="):
        beforeEquals = false
        try expectValue(after: i + 1, inArray: false)
      case UInt8(ascii: ","):
        if stack.last == UInt8(ascii: "{") {
          beforeEquals = true
          parts = 1
          try expectKey(after: i + 1, closing: UInt8(ascii: "}"))
        } else if stack.last == UInt8(ascii: "[") {
          try expectValue(after: i + 1, inArray: true)
        }
      case UInt8(ascii: "."):
        if beforeEquals || inHeader {
          parts += 1
          if parts > Limits.depth { throw fail("a key of more than \(Limits.depth) dotted parts") }
          try expectKey(after: i + 1, closing: nil)
        }
      default:
        break
      }
      i += 1
    }
  }
}
