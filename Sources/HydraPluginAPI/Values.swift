import Foundation

/// Where a shard's state (parameters, gradients, optimizer state) is.
public enum Residency: Equatable, Sendable {
  case device(Int)
  case host
  case disk
  /// Held by another process (`mpi`: the shard's home rank): this copy has no bytes at all.
  case elsewhere
}

/// A failure that is not the user's input: exits 1.
public struct RuntimeError: Error, CustomStringConvertible, Sendable {
  public let description: String
  public init(_ description: String) { self.description = description }
}

/// The 64-bit little-endian word at `offset` of `bytes` (which holds 8 bytes from there).
public func littleEndianWord(_ bytes: [UInt8], at offset: Int) -> Int64 {
  var x: UInt64 = 0
  for i in 0..<8 { x |= UInt64(bytes[offset + i]) << (8 * UInt64(i)) }
  return Int64(bitPattern: x)
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
public func tomlDouble(_ v: Double) -> String {
  if v.isNaN { return "nan" }
  if v.isInfinite { return v < 0 ? "-inf" : "inf" }
  return "\(v)"  // e.g. 0.001, 1e-08, 1.0, 5e+22: all valid TOML floats
}

/// A TOML basic string literal.
public func tomlString(_ s: String) -> String {
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
public func tomlKey(_ k: String) -> String {
  let bare =
    !k.isEmpty
    && k.unicodeScalars.allSatisfy {
      ("a"..."z").contains($0) || ("A"..."Z").contains($0) || ("0"..."9").contains($0) || $0 == "_" || $0 == "-"
    }
  return bare ? k : tomlString(k)
}

/// How a data file is read. See `Dataset` for the exact semantics of each format.
public enum DataFormat: String, Sendable, CaseIterable {
  /// The file's bytes are the tokens (vocabulary 256).
  case text
  /// Raw little-endian uint16 tokens, no header (nanoGPT / llm.c style `.bin` without header).
  case tokens
  /// Rows of numeric columns separated by commas; one column is an integer class label.
  case csv
}
