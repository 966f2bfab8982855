/// Parses a memory size: an integer number of bytes, or a string of a number and a unit.
///
/// Units are case-sensitive: binary `KiB MiB GiB TiB` (1024^n), decimal `kB`/`KB` `MB GB TB` (1000^n),
/// and `B`. A space between number and unit is optional; the number may have a fraction
/// (`"1.5GiB"`), the result is rounded down to whole bytes. Rejected, with the reason: no or an unknown
/// unit in a string (`"12 G"`: G of what?; `"12gb"`: lower-case b reads as bits), zero, negatives, and
/// anything else (`"abc"`, `"12 GiBs"`). Returns the bytes or a message.
struct SizeError: Error { let message: String }

func parseSize(_ s: String) -> Result<Int, SizeError> {
  let units: [(String, Int)] = [
    ("B", 1), ("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30), ("TiB", 1 << 40),
    ("kB", 1000), ("KB", 1000), ("MB", 1_000_000), ("GB", 1_000_000_000), ("TB", 1_000_000_000_000),
  ]
  let accepted =
    "an integer number of bytes, or a string like \"512MiB\" or \"1.5 GB\" "
    + "(units KiB, MiB, GiB, TiB = 1024^n; kB, KB, MB, GB, TB = 1000^n; B)"
  let text = s.trimmedOf(" \t")
  if text.hasPrefix("-") { return .fail("must be positive, not \(tomlString(s))") }
  let number = text.prefix(while: { $0.isASCII && ($0.isNumber || $0 == ".") })
  let unit = String(text.dropFirst(number.count).drop(while: { $0 == " " }))
  let parts = number.split(separator: ".", omittingEmptySubsequences: false)
  guard !number.isEmpty, parts.count <= 2, !parts[0].isEmpty, parts.allSatisfy({ !$0.isEmpty }) else {
    return .fail("\(tomlString(s)) is not a size; expected \(accepted)")
  }
  guard let multiplier = units.first(where: { $0.0 == unit })?.1 ?? (unit.isEmpty ? 1 : nil) else {
    return .fail("\(tomlString(s)) has an unknown unit \(tomlString(unit)); expected \(accepted)")
  }
  let bytes: Int
  if parts.count == 1 {
    guard let n = Int(parts[0]) else { return .fail("\(tomlString(s)) is too large") }
    let (b, overflow) = n.multipliedReportingOverflow(by: multiplier)
    guard !overflow else { return .fail("\(tomlString(s)) is too large") }
    bytes = b
  } else {
    guard let x = Double(number) else { return .fail("\(tomlString(s)) is not a size; expected \(accepted)") }
    let b = (x * Double(multiplier)).rounded(.down)
    guard b < 9.2e18 else { return .fail("\(tomlString(s)) is too large") }
    bytes = Int(b)
  }
  guard bytes > 0 else { return .fail("must be at least 1 byte, not \(tomlString(s))") }
  return .success(bytes)
}

private extension String {
  func trimmedOf(_ set: String) -> String {
    let chars = Set(set)
    return String(self.drop(while: { chars.contains($0) }).reversed().drop(while: { chars.contains($0) }).reversed())
  }
}

private extension Result where Failure == SizeError {
  static func fail(_ message: String) -> Self { .failure(SizeError(message: message)) }
}
