/// A parsed csv file: features (already scaled) and integer labels, one row per example, in file order.
struct CSVTable {
  var rows: Int
  var featureCount: Int
  var features: [Float]  // rows * featureCount
  var labels: [Int32]  // rows

  /// The same rows in the order `order` (a permutation of 0 ..< rows).
  func permuted(_ order: [Int32]) -> CSVTable {
    var out = self
    for (to, from) in order.enumerated() {
      let f = Int(from)
      out.labels[to] = labels[f]
      for c in 0..<featureCount { out.features[to * featureCount + c] = features[f * featureCount + c] }
    }
    return out
  }

  /// Parses `bytes` (the decompressed file) as described in `Dataset`'s documentation.
  /// Lines are counted 1-based in the file (the header included); columns are 1-based.
  static func parse(_ bytes: [UInt8], spec: DataSpec) throws -> CSVTable {
    let file = spec.path
    // Split into lines: (1-based line number, byte range without the newline and a trailing CR).
    var lines: [(number: Int, range: Range<Int>)] = []
    var start = 0
    var number = 1
    while start < bytes.count {
      var end = start
      while end < bytes.count && bytes[end] != 0x0A { end += 1 }
      lines.append((number, start..<end))
      number += 1
      start = end + 1
    }
    if spec.header && !lines.isEmpty { lines.removeFirst() }
    // Blank lines at the end are ignored; a blank line before the last row is an error.
    while let last = lines.last, isBlank(bytes, last.range) { lines.removeLast() }
    guard let first = lines.first else {
      throw InputError(file: file, spec.header ? "has no data rows after the header" : "is empty")
    }

    let columns = cellRanges(bytes, first.range).count
    guard columns >= 2 else {
      throw InputError(
        file: file, line: first.number,
        "\(columns) column: a csv needs at least one feature column and a label column")
    }
    let label = spec.labelColumn < 0 ? columns + spec.labelColumn : spec.labelColumn
    guard label >= 0 && label < columns else {
      throw InputError(
        file: file, line: first.number,
        "label column \(spec.labelColumn) does not exist: the first row has \(columns) columns")
    }
    let featureCount = columns - 1
    var features: [Float] = []
    features.reserveCapacity(lines.count * featureCount)
    var labels: [Int32] = []
    labels.reserveCapacity(lines.count)

    for line in lines {
      if isBlank(bytes, line.range) {
        throw InputError(file: file, line: line.number, "blank line between data rows")
      }
      let cells = cellRanges(bytes, line.range)
      guard cells.count == columns else {
        throw InputError(
          file: file, line: line.number,
          "\(cells.count) columns, but the first row has \(columns)")
      }
      for (c, cell) in cells.enumerated() {
        guard let value = parseNumber(bytes, cell) else {
          throw InputError(
            file: file, line: line.number,
            "column \(c + 1): \"\(text(bytes, cell))\" is not a number")
        }
        if c == label {
          guard value.rounded(.towardZero) == value, abs(value) < 2_147_483_648 else {
            throw InputError(
              file: file, line: line.number,
              "column \(c + 1): label \"\(text(bytes, cell))\" is not an integer")
          }
          let k = Int(value)
          guard k >= 0 && (spec.classes <= 0 || k < spec.classes) else {
            let rule = spec.classes > 0 ? "is not in 0..<\(spec.classes)" : "is negative"
            throw InputError(file: file, line: line.number, "column \(c + 1): label \(k) \(rule)")
          }
          labels.append(Int32(k))
        } else {
          // Finite as a Double is not enough: 1e39 is infinite as a Float, and so may the scaled
          // value be; either would make the model diverge at its first step.
          let feature = Float(value) * spec.featureScale
          guard feature.isFinite else {
            throw InputError(
              file: file, line: line.number,
              "column \(c + 1): \"\(text(bytes, cell))\" times feature_scale is not finite as a 32-bit float")
          }
          features.append(feature)
        }
      }
    }
    return CSVTable(rows: labels.count, featureCount: featureCount, features: features, labels: labels)
  }

  private static func isSpace(_ b: UInt8) -> Bool { b == 0x20 || b == 0x09 || b == 0x0D }

  private static func isBlank(_ bytes: [UInt8], _ range: Range<Int>) -> Bool {
    range.allSatisfy { isSpace(bytes[$0]) }
  }

  /// The cells of a line, split at commas, each trimmed of spaces, tabs and carriage returns.
  private static func cellRanges(_ bytes: [UInt8], _ range: Range<Int>) -> [Range<Int>] {
    var cells: [Range<Int>] = []
    var start = range.lowerBound
    var i = start
    while true {
      if i == range.upperBound || bytes[i] == 0x2C {
        var lo = start
        var hi = i
        while lo < hi && isSpace(bytes[lo]) { lo += 1 }
        while hi > lo && isSpace(bytes[hi - 1]) { hi -= 1 }
        cells.append(lo..<hi)
        if i == range.upperBound { break }
        start = i + 1
      }
      i += 1
    }
    return cells
  }

  private static func text(_ bytes: [UInt8], _ range: Range<Int>) -> String {
    let shown = range.count > 40 ? range.lowerBound..<(range.lowerBound + 40) : range
    return String(decoding: bytes[shown], as: UTF8.self) + (range.count > 40 ? "..." : "")
  }

  /// A finite decimal number. Features are then rounded to Float (`Float(Double(text))`; for the
  /// integers and short decimals of ordinary files this equals `Float(text)`).
  private static func parseNumber(_ bytes: [UInt8], _ range: Range<Int>) -> Double? {
    if range.isEmpty { return nil }
    // Fast path: an optionally signed integer of at most 15 digits is exact in Double.
    var i = range.lowerBound
    var negative = false
    if bytes[i] == 0x2D || bytes[i] == 0x2B {
      negative = bytes[i] == 0x2D
      i += 1
    }
    if i < range.upperBound && range.upperBound - i <= 15 {
      var value: Int64 = 0
      var j = i
      while j < range.upperBound, bytes[j] >= 0x30, bytes[j] <= 0x39 {
        value = value * 10 + Int64(bytes[j] - 0x30)
        j += 1
      }
      if j == range.upperBound { return Double(negative ? -value : value) }
    }
    // General path: only digits, sign, '.', and an exponent are allowed (no "nan", "inf", hex).
    for k in range {
      let b = bytes[k]
      let allowed = (b >= 0x30 && b <= 0x39) || b == 0x2E || b == 0x2D || b == 0x2B || b == 0x65 || b == 0x45
      if !allowed { return nil }
    }
    guard let value = Double(String(decoding: bytes[range], as: UTF8.self)), value.isFinite else {
      return nil
    }
    return value
  }
}
