import Foundation

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#elseif canImport(Darwin)
  import Darwin
#endif

/// The element types of the safetensors format that hydra-mpi reads. All of them widen to Float32.
public enum SafeTensorsDType: String, Sendable, CaseIterable {
  case F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL

  /// Bytes per element.
  public var size: Int {
    switch self {
    case .F64, .I64: return 8
    case .F32, .I32: return 4
    case .F16, .BF16, .I16: return 2
    case .I8, .U8, .BOOL: return 1
    }
  }
}

/// One tensor of a safetensors file, as its header describes it.
public struct SafeTensorsEntry: Sendable, Equatable {
  public var name: String
  public var dtype: SafeTensorsDType
  public var shape: [Int]
  /// Bytes within the data buffer (the part of the file after the header), end exclusive.
  public var byteRange: Range<Int>

  public init(name: String, dtype: SafeTensorsDType, shape: [Int], byteRange: Range<Int>) {
    self.name = name
    self.dtype = dtype
    self.shape = shape
    self.byteRange = byteRange
  }

  /// Number of elements: the product of `shape` (1 for a scalar, shape `[]`).
  public var count: Int { shape.reduce(1, *) }
}

/// A safetensors file (https://github.com/huggingface/safetensors): an 8-byte little-endian header
/// length N, N bytes of JSON describing the tensors, then the tensors' bytes.
///
/// `init` validates the whole header against the file size, so that every later read is in bounds;
/// tensor data is read on demand with `pread` from a descriptor held open for the object's lifetime.
/// Every problem with the file is an `InputError` naming the file.
public final class SafeTensorsFile: @unchecked Sendable {
  /// Headers above this size are refused before anything is allocated for them.
  /// Limits checked before anything is parsed or allocated: a header of 16 MiB holds about 100,000
  /// entries, far more than any model's (GPT-2 XL's header is 60 KB).
  public static let maxHeaderLength: UInt64 = 16 << 20
  public static let maxTensors = 100_000

  public let path: String
  public let metadata: [String: String]
  /// The tensors, by name.
  public let entries: [String: SafeTensorsEntry]
  /// Byte offset of the data buffer within the file (8 + header length).
  public let dataStart: Int
  /// Length of the data buffer in bytes.
  public let dataLength: Int

  private let fd: Int32

  /// Opens `path` and validates its header against the file. Throws `InputError`.
  public init(path: String) throws {
    self.path = path
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else {
      throw InputError(file: path, "cannot open safetensors file: \(String(cString: strerror(errno)))")
    }
    do {
      var st = stat()
      guard fstat(fd, &st) == 0 else {
        throw InputError(file: path, "cannot stat: \(String(cString: strerror(errno)))")
      }
      guard (st.st_mode & S_IFMT) == S_IFREG else {
        throw InputError(file: path, "not a regular file")
      }
      let fileSize = Int(st.st_size)
      guard fileSize >= 8 else {
        throw InputError(
          file: path,
          "file is too short (\(fileSize) bytes): a safetensors file starts with an 8-byte header length")
      }
      var lengthBytes = [UInt8](repeating: 0, count: 8)
      try SafeTensorsFile.readFully(fd: fd, into: &lengthBytes, at: 0, path: path)
      let headerLength = lengthBytes.enumerated().reduce(UInt64(0)) {
        $0 | UInt64($1.element) << (8 * UInt64($1.offset))
      }
      guard headerLength <= SafeTensorsFile.maxHeaderLength else {
        throw InputError(
          file: path,
          "header length \(headerLength) is over the limit of \(SafeTensorsFile.maxHeaderLength) bytes; not a safetensors file, or not one of a model"
        )
      }
      guard headerLength <= UInt64(fileSize - 8) else {
        throw InputError(
          file: path, "header length \(headerLength) exceeds the file size (\(fileSize) bytes): file truncated?")
      }
      var header = [UInt8](repeating: 0, count: Int(headerLength))
      try SafeTensorsFile.readFully(fd: fd, into: &header, at: 8, path: path)
      let dataStart = 8 + Int(headerLength)
      let dataLength = fileSize - dataStart
      let parsed = try SafeTensorsHeader.parse(header, dataLength: dataLength, file: path)
      self.metadata = parsed.metadata
      self.entries = parsed.entries
      self.dataStart = dataStart
      self.dataLength = dataLength
      self.fd = fd
    } catch {
      close(fd)
      throw error
    }
  }

  deinit { close(fd) }

  /// The tensor names, sorted by data offset (ties by end, then name).
  public var names: [String] {
    entries.values.sorted {
      ($0.byteRange.lowerBound, $0.byteRange.upperBound, $0.name)
        < ($1.byteRange.lowerBound, $1.byteRange.upperBound, $1.name)
    }.map(\.name)
  }

  /// The entry named `name`, or an error that lists a few names that are present.
  public func entry(_ name: String) throws -> SafeTensorsEntry {
    if let e = entries[name] { return e }
    let present = names
    let shown = present.prefix(5).map { "\"\($0)\"" }.joined(separator: ", ")
    let more = present.count > 5 ? ", ... (\(present.count) in all)" : ""
    let list = present.isEmpty ? "the file has no tensors" : "present: \(shown)\(more)"
    throw InputError(file: path, "no tensor \"\(name)\"; \(list)")
  }

  /// The tensor widened to Float32 (F16, BF16, F64 and the integer types converted; BOOL as 0/1),
  /// checked against `expectedShape` if given.
  public func floats(_ name: String, expectedShape: [Int]? = nil) throws -> [Float] {
    let e = try entry(name)
    if let expectedShape, expectedShape != e.shape {
      throw InputError(
        file: path, "tensor \"\(name)\": expected shape \(expectedShape), found shape \(e.shape)")
    }
    let count = e.count
    let byteCount = e.byteRange.count
    if e.dtype == .F32 {
      return try [Float](unsafeUninitializedCapacity: count) { buf, initialized in
        try SafeTensorsFile.readFully(
          fd: fd, into: UnsafeMutableRawBufferPointer(buf), at: dataStart + e.byteRange.lowerBound, path: path)
        #if _endian(big)
          for i in 0..<count { buf[i] = Float(bitPattern: UInt32(littleEndian: buf[i].bitPattern)) }
        #endif
        initialized = count
      }
    }
    var raw = [UInt8](repeating: 0, count: byteCount)
    try SafeTensorsFile.readFully(fd: fd, into: &raw, at: dataStart + e.byteRange.lowerBound, path: path)
    return raw.withUnsafeBytes { SafeTensorsConvert.toFloats($0, dtype: e.dtype, count: count) }
  }

  // MARK: reading

  static func readFully(fd: Int32, into bytes: inout [UInt8], at offset: Int, path: String) throws {
    try bytes.withUnsafeMutableBytes { try readFully(fd: fd, into: $0, at: offset, path: path) }
  }

  static func readFully(fd: Int32, into buf: UnsafeMutableRawBufferPointer, at offset: Int, path: String) throws {
    var done = 0
    while done < buf.count {
      let n = pread(fd, buf.baseAddress! + done, buf.count - done, off_t(offset + done))
      if n < 0 {
        if errno == EINTR { continue }
        throw InputError(file: path, "read failed at byte \(offset + done): \(String(cString: strerror(errno)))")
      }
      if n == 0 {
        throw InputError(
          file: path, "file ended at byte \(offset + done), expected \(offset + buf.count): truncated while open?")
      }
      done += n
    }
  }
}

/// Widening conversions from the stored element types to Float32.
enum SafeTensorsConvert {
  /// F16 bits to Float32, exact (every F16 value, NaN payloads included, is a Float32 value).
  @inline(__always)
  static func f16ToF32(_ bits: UInt16) -> Float {
    let sign = UInt32(bits & 0x8000) << 16
    let exp = UInt32(bits >> 10) & 0x1F
    let mant = UInt32(bits & 0x3FF)
    if exp == 0x1F { return Float(bitPattern: sign | 0x7F80_0000 | mant << 13) }  // inf, NaN
    if exp != 0 { return Float(bitPattern: sign | (exp + 112) << 23 | mant << 13) }
    // zero or subnormal: mant * 2^-24, exact in Float32
    let magnitude = Float(mant) * 0x1p-24
    return sign != 0 ? -magnitude : magnitude
  }

  /// BF16 bits to Float32: the upper 16 bits of a Float32.
  @inline(__always)
  static func bf16ToF32(_ bits: UInt16) -> Float { Float(bitPattern: UInt32(bits) << 16) }

  static func toFloats(_ raw: UnsafeRawBufferPointer, dtype: SafeTensorsDType, count: Int) -> [Float] {
    precondition(raw.count == count * dtype.size)
    func load<T: FixedWidthInteger>(_ i: Int, _: T.Type) -> T {
      T(littleEndian: raw.loadUnaligned(fromByteOffset: i * MemoryLayout<T>.size, as: T.self))
    }
    return [Float](unsafeUninitializedCapacity: count) { out, initialized in
      switch dtype {
      case .F64: for i in 0..<count { out[i] = Float(Double(bitPattern: load(i, UInt64.self))) }
      case .F32: for i in 0..<count { out[i] = Float(bitPattern: load(i, UInt32.self)) }
      case .F16: for i in 0..<count { out[i] = f16ToF32(load(i, UInt16.self)) }
      case .BF16: for i in 0..<count { out[i] = bf16ToF32(load(i, UInt16.self)) }
      case .I64: for i in 0..<count { out[i] = Float(load(i, Int64.self)) }
      case .I32: for i in 0..<count { out[i] = Float(load(i, Int32.self)) }
      case .I16: for i in 0..<count { out[i] = Float(load(i, Int16.self)) }
      case .I8: for i in 0..<count { out[i] = Float(load(i, Int8.self)) }
      case .U8: for i in 0..<count { out[i] = Float(load(i, UInt8.self)) }
      case .BOOL: for i in 0..<count { out[i] = load(i, UInt8.self) != 0 ? 1 : 0 }
      }
      initialized = count
    }
  }
}
