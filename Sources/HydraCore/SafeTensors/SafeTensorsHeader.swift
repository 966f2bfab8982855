import Foundation

/// Parsing and validation of a safetensors header against the size of the data buffer.
///
/// Every check the format implies is made here, once, so that reading a tensor later can neither go
/// out of bounds nor allocate more than the file holds: types of every field, known dtypes,
/// non-negative integer dims whose product (times the element size) does not overflow, offsets in
/// order and inside the buffer, byte lengths that match the shapes, and tensors that tile the buffer
/// exactly (no overlaps, no gaps, no trailing bytes).
enum SafeTensorsHeader {
  struct Parsed {
    var metadata: [String: String]
    var entries: [String: SafeTensorsEntry]
  }

  static func parse(_ header: [UInt8], dataLength: Int, file: String) throws -> Parsed {
    func fail(_ message: String) -> InputError { InputError(file: file, message) }

    guard String(validating: header, as: UTF8.self) != nil else {
      throw fail("header is not valid UTF-8")
    }
    // Every entry names its dtype: counting the word bounds the entries before JSON is parsed.
    let dtype = Array("\"dtype\"".utf8)
    var tensors = 0
    if header.count >= dtype.count {
      for i in 0...(header.count - dtype.count)
      where header[i] == dtype[0] && Array(header[i..<i + dtype.count]) == dtype {
        tensors += 1
      }
    }
    guard tensors <= SafeTensorsFile.maxTensors else {
      throw fail("header lists \(tensors) tensors, more than the limit of \(SafeTensorsFile.maxTensors)")
    }
    if let dup = duplicateTopLevelKey(header) {
      throw fail("header names tensor \"\(dup)\" twice (duplicate key)")
    }
    let json: Any
    do {
      json = try JSONSerialization.jsonObject(with: Data(header), options: [])
    } catch {
      throw fail("header is not valid JSON (\(header.count) bytes): \(error.localizedDescription)")
    }
    guard let object = json as? [String: Any] else {
      throw fail("header is JSON but not an object of tensors")
    }

    var metadata: [String: String] = [:]
    var entries: [String: SafeTensorsEntry] = [:]
    for (name, value) in object {
      if name == "__metadata__" {
        guard let dict = value as? [String: Any] else {
          throw fail("\"__metadata__\" must be an object of strings, found \(describe(value))")
        }
        for (k, v) in dict {
          guard let s = v as? String, !isNumber(v) else {
            throw fail("\"__metadata__\": value of \"\(k)\" must be a string, found \(describe(v))")
          }
          metadata[k] = s
        }
        continue
      }
      entries[name] = try entry(name, value, dataLength: dataLength, file: file)
    }
    try checkTiling(entries.values, dataLength: dataLength, file: file)
    return Parsed(metadata: metadata, entries: entries)
  }

  /// One tensor's description, with every field checked on its own.
  static func entry(_ name: String, _ value: Any, dataLength: Int, file: String) throws -> SafeTensorsEntry {
    func fail(_ message: String) -> InputError { InputError(file: file, "tensor \"\(name)\": \(message)") }
    guard let dict = value as? [String: Any] else {
      throw fail("must be an object with dtype, shape and data_offsets, found \(describe(value))")
    }
    guard let dtypeValue = dict["dtype"] else { throw fail("missing \"dtype\"") }
    guard !isNumber(dtypeValue), let dtypeName = dtypeValue as? String else {
      throw fail("\"dtype\" must be a string, found \(describe(dtypeValue))")
    }
    guard let dtype = SafeTensorsDType(rawValue: dtypeName) else {
      let known = SafeTensorsDType.allCases.map(\.rawValue).joined(separator: ", ")
      throw fail("unknown dtype \"\(dtypeName)\" (supported: \(known))")
    }
    guard let shapeValue = dict["shape"] else { throw fail("missing \"shape\"") }
    guard let shapeArray = shapeValue as? [Any] else {
      throw fail("\"shape\" must be an array of integers, found \(describe(shapeValue))")
    }
    var shape: [Int] = []
    for (axis, d) in shapeArray.enumerated() {
      guard let dim = exactInt(d) else {
        throw fail("shape dimension \(axis) is \(describe(d)), not an integer in range")
      }
      guard dim >= 0 else { throw fail("shape dimension \(axis) is negative (\(dim))") }
      shape.append(dim)
    }
    guard let offsetsValue = dict["data_offsets"] else { throw fail("missing \"data_offsets\"") }
    guard let offsets = offsetsValue as? [Any], offsets.count == 2 else {
      throw fail("\"data_offsets\" must be an array of two integers [begin, end], found \(describe(offsetsValue))")
    }
    guard let begin = exactInt(offsets[0]), let end = exactInt(offsets[1]) else {
      throw fail("\"data_offsets\" \(describe(offsetsValue)) are not integers in range")
    }
    guard begin >= 0, end >= 0 else { throw fail("data offsets [\(begin), \(end)) are negative") }
    guard begin <= end else { throw fail("data offsets [\(begin), \(end)) are reversed") }
    guard end <= dataLength else {
      throw fail("data offsets [\(begin), \(end)) reach beyond the data buffer (\(dataLength) bytes)")
    }
    var count = 1
    for dim in shape {
      let (p, overflow) = count.multipliedReportingOverflow(by: dim)
      guard !overflow else { throw fail("shape \(shape) overflows: the element count does not fit in an Int") }
      count = p
    }
    let (bytes, overflow) = count.multipliedReportingOverflow(by: dtype.size)
    guard !overflow else { throw fail("shape \(shape) overflows: the byte count does not fit in an Int") }
    guard bytes == end - begin else {
      throw fail(
        "data offsets [\(begin), \(end)) hold \(end - begin) bytes, but shape \(shape) of \(dtype.rawValue) needs \(bytes) bytes"
      )
    }
    return SafeTensorsEntry(name: name, dtype: dtype, shape: shape, byteRange: begin..<end)
  }

  /// The tensors must tile the data buffer: sorted by offset, each starts where the previous ended,
  /// and the last ends at the end of the buffer.
  static func checkTiling(_ entries: some Collection<SafeTensorsEntry>, dataLength: Int, file: String) throws {
    let sorted = entries.sorted {
      ($0.byteRange.lowerBound, $0.byteRange.upperBound, $0.name)
        < ($1.byteRange.lowerBound, $1.byteRange.upperBound, $1.name)
    }
    var covered = 0
    var previous: SafeTensorsEntry?
    for e in sorted {
      let r = e.byteRange
      if r.lowerBound < covered, let p = previous {
        throw InputError(
          file: file,
          "tensor \"\(e.name)\": data offsets [\(r.lowerBound), \(r.upperBound)) overlap tensor \"\(p.name)\" [\(p.byteRange.lowerBound), \(p.byteRange.upperBound))"
        )
      }
      if r.lowerBound > covered {
        throw InputError(
          file: file,
          "data buffer bytes [\(covered), \(r.lowerBound)) are uncovered: no tensor holds them (before tensor \"\(e.name)\")"
        )
      }
      covered = r.upperBound
      if r.count > 0 || previous == nil { previous = e }
    }
    if covered != dataLength {
      throw InputError(
        file: file,
        "data buffer has \(dataLength - covered) trailing bytes [\(covered), \(dataLength)) not covered by any tensor")
    }
  }

  // MARK: JSON helpers

  /// An integer exactly as JSON wrote it; nil for fractions, numbers out of Int's range, booleans
  /// and non-numbers. Never traps.
  static func exactInt(_ value: Any) -> Int? {
    guard isNumber(value), let n = value as? NSNumber else { return nil }
    let d = n.doubleValue
    guard d.isFinite, d == d.rounded() else { return nil }
    // Outside ±2^53 a double does not pin down an integer; only trust exact integer storage there.
    if abs(d) < 0x1p53 { return Int(exactly: d) }
    guard abs(d) < 0x1p63 else { return nil }
    let i = n.int64Value
    guard Double(i) == d, String(describing: n) == String(i) else { return nil }
    return Int(exactly: i)
  }

  /// A JSON number (not a boolean, not a string).
  static func isNumber(_ value: Any) -> Bool {
    if value is String { return false }
    guard let n = value as? NSNumber else { return false }
    // JSONSerialization gives booleans as NSNumber too; tell them apart by their type encoding.
    let type = String(cString: n.objCType)
    return type != "c" && type != "B"
  }

  static func describe(_ value: Any) -> String {
    if value is NSNull { return "null" }
    if let s = value as? String, !isNumber(value) { return "\"\(s)\"" }
    if let n = value as? NSNumber {
      if !isNumber(value) { return n.boolValue ? "true" : "false" }
      return "\(n)"
    }
    if let a = value as? [Any] { return "[" + a.map(describe).joined(separator: ", ") + "]" }
    if value is [String: Any] { return "an object" }
    return "\(value)"
  }

  /// The first key that appears twice at the top level of a JSON object, if any. JSONSerialization
  /// keeps one of the two silently; a safetensors header naming a tensor twice is malformed. Returns
  /// nil for anything that is not a well-formed object (JSONSerialization reports that).
  static func duplicateTopLevelKey(_ bytes: [UInt8]) -> String? {
    var seen = Set<[UInt8]>()
    var depth = 0
    var i = 0
    var expectKey = false
    while i < bytes.count {
      let c = bytes[i]
      switch c {
      case UInt8(ascii: "{"), UInt8(ascii: "["):
        depth += 1
        expectKey = depth == 1 && c == UInt8(ascii: "{")
        i += 1
      case UInt8(ascii: "}"), UInt8(ascii: "]"):
        depth -= 1
        i += 1
      case UInt8(ascii: ","):
        expectKey = depth == 1
        i += 1
      case UInt8(ascii: "\""):
        // A string: scan to its closing quote, skipping escapes.
        var j = i + 1
        while j < bytes.count, bytes[j] != UInt8(ascii: "\"") {
          j += bytes[j] == UInt8(ascii: "\\") ? 2 : 1
        }
        guard j < bytes.count else { return nil }
        if expectKey {
          let raw = Array(bytes[(i + 1)..<j])
          // Compare decoded keys so that "a" and "\u0061" count as the same name.
          let key = decodeJSONString(raw) ?? String(decoding: raw, as: UTF8.self)
          if !seen.insert(Array(key.utf8)).inserted { return key }
          expectKey = false
        }
        i = j + 1
      default:
        i += 1
      }
    }
    return nil
  }

  private static func decodeJSONString(_ raw: [UInt8]) -> String? {
    let quoted = Data([UInt8(ascii: "["), UInt8(ascii: "\"")] + raw + [UInt8(ascii: "\""), UInt8(ascii: "]")])
    return (try? JSONSerialization.jsonObject(with: quoted)).flatMap { ($0 as? [Any])?.first as? String }
  }
}
