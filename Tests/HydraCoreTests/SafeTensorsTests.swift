import Foundation
import XCTest

@testable import HydraCore

final class SafeTensorsTests: XCTestCase {
  private var dir = ""

  override func setUpWithError() throws {
    dir = NSTemporaryDirectory() + "hydra-st-\(UUID().uuidString)"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
  }

  override func tearDownWithError() throws {
    try? FileManager.default.removeItem(atPath: dir)
  }

  // MARK: helpers

  /// Writes `bytes` as they are to `name` in the test folder.
  private func raw(_ name: String, _ bytes: [UInt8]) throws -> String {
    let path = dir + "/" + name
    try Data(bytes).write(to: URL(fileURLWithPath: path))
    return path
  }

  /// A file built by hand: the length of `header` (or `headerLength`), `header`, `data`.
  private func handBuilt(_ name: String, header: String, data: [UInt8] = [], headerLength: UInt64? = nil) throws
    -> String
  {
    let h = Array(header.utf8)
    return try raw(name, le64(headerLength ?? UInt64(h.count)) + h + data)
  }

  private func le64(_ v: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }
  private func le16(_ v: UInt16) -> [UInt8] { [UInt8(v & 0xFF), UInt8(v >> 8)] }
  private func le32(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }

  /// Header and buffer for tensors given as (name, dtype, shape, bytes), laid out in order.
  private func layout(_ tensors: [(String, String, [Int], [UInt8])]) -> (header: String, data: [UInt8]) {
    var parts: [String] = []
    var data: [UInt8] = []
    for (name, dtype, shape, bytes) in tensors {
      parts.append(
        "\"\(name)\": {\"dtype\": \"\(dtype)\", \"shape\": \(shape), \"data_offsets\": [\(data.count), \(data.count + bytes.count)]}"
      )
      data += bytes
    }
    return ("{" + parts.joined(separator: ", ") + "}", data)
  }

  /// Opening the file must throw an InputError whose description names the file and says `words`.
  private func assertRejects(
    _ path: String, _ words: String..., file: StaticString = #filePath, line: UInt = #line
  ) {
    XCTAssertThrowsError(try SafeTensorsFile(path: path), file: file, line: line) { error in
      self.check(error, path: path, words, file: file, line: line)
    }
  }

  /// `io`: a failure to write (exit 1), not bad input (exit 2).
  private func check(_ error: Error, path: String, _ words: [String], io: Bool = false, file: StaticString, line: UInt)
  {
    let e = "\(error)"
    guard io ? error is WriteError : error is InputError else {
      return XCTFail(
        "expected \(io ? "WriteError" : "InputError"), got \(type(of: error)): \(error)", file: file, line: line)
    }
    let name = (path as NSString).lastPathComponent
    XCTAssertTrue(e.contains(name), "\(e) does not name \(name)", file: file, line: line)
    for w in words {
      XCTAssertTrue(e.contains(w), "\(e) does not say \"\(w)\"", file: file, line: line)
    }
  }

  /// A header of one tensor "w" whose description is `body` (the JSON object's inside).
  private func rejectsEntry(
    _ body: String, data: [UInt8] = Array(repeating: 0, count: 8), _ words: String..., line: UInt = #line
  ) throws {
    let path = try handBuilt("entry\(line).safetensors", header: "{\"w\": {\(body)}}", data: data)
    XCTAssertThrowsError(try SafeTensorsFile(path: path), line: line) { error in
      self.check(error, path: path, ["\"w\""] + words, file: #filePath, line: line)
    }
  }

  private func write(_ tensors: [(String, [Int], [Float])], metadata: [String: String] = [:], to path: String) throws {
    // Keep the arrays alive while their buffer pointers are in use.
    let arrays = tensors.map { ContiguousArray($0.2) }
    func go(_ i: Int, _ acc: [(name: String, shape: [Int], values: UnsafeBufferPointer<Float>)]) throws {
      if i == arrays.count { return try SafeTensorsFile.write(acc, metadata: metadata, to: path) }
      try arrays[i].withUnsafeBufferPointer { try go(i + 1, acc + [(tensors[i].0, tensors[i].1, $0)]) }
    }
    try go(0, [])
  }

  private func bits(_ xs: [Float]) -> [UInt32] { xs.map(\.bitPattern) }

  private func folderListing() throws -> [String] { try FileManager.default.contentsOfDirectory(atPath: dir).sorted() }

  // MARK: round trip

  func testRoundTripIsBitExactWithMetadataAndOrder() throws {
    let special: [Float] = [
      -0.0, Float(bitPattern: 0x7FC1_2345), Float(bitPattern: 0xFF80_0001), .infinity, -.infinity,
      Float(bitPattern: 1), -.leastNormalMagnitude, .greatestFiniteMagnitude, 0.1,
    ]
    let tensors: [(String, [Int], [Float])] = [
      ("h.1.w", [3, 3], special),
      ("scalar", [], [3.5]),
      ("empty", [4, 0, 2], []),
      ("a.bias", [5], [1, 2, 3, 4, 5]),
    ]
    let metadata = ["format": "pt", "note": "quote \" backslash \\ newline \n tab \t ctrl \u{1} é 🚀", "": "empty key"]
    let path = dir + "/model.safetensors"
    try write(tensors, metadata: metadata, to: path)

    let f = try SafeTensorsFile(path: path)
    XCTAssertEqual(f.metadata, metadata)
    XCTAssertEqual(f.names, ["h.1.w", "scalar", "empty", "a.bias"], "names follow the data offsets, not the alphabet")
    for (name, shape, values) in tensors {
      XCTAssertEqual(f.entries[name]?.shape, shape)
      XCTAssertEqual(f.entries[name]?.dtype, .F32)
      XCTAssertEqual(bits(try f.floats(name, expectedShape: shape)), bits(values), name)
    }
    XCTAssertEqual(f.entries["h.1.w"]?.byteRange, 0..<36)
    XCTAssertEqual(f.entries["scalar"]?.byteRange, 36..<40)
    XCTAssertEqual(f.entries["empty"]?.byteRange, 40..<40)
    XCTAssertEqual(f.entries["a.bias"]?.byteRange, 40..<60)
    XCTAssertEqual(f.dataStart % 8, 0, "header padded to 8-byte alignment")
    XCTAssertEqual(f.dataLength, 60)
    let size = try FileManager.default.attributesOfItem(atPath: path)[.size] as? Int
    XCTAssertEqual(size, f.dataStart + 60)
    XCTAssertEqual(try folderListing(), ["model.safetensors"], "no temporary file left behind")
  }

  func testWrittenHeaderIsPlainSafetensorsJSON() throws {
    let path = dir + "/plain.safetensors"
    try write([("x", [2], [1, 2]), ("y", [1, 1], [3])], metadata: ["k": "v"], to: path)
    let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
    let n = Int(bytes[0..<8].enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) })
    XCTAssertEqual((8 + n) % 8, 0)
    let header = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(bytes[8..<(8 + n)])) as? [String: Any])
    XCTAssertEqual(header["__metadata__"] as? [String: String], ["k": "v"])
    let y = try XCTUnwrap(header["y"] as? [String: Any])
    XCTAssertEqual(y["dtype"] as? String, "F32")
    XCTAssertEqual(y["shape"] as? [Int], [1, 1])
    XCTAssertEqual(y["data_offsets"] as? [Int], [8, 12])
    XCTAssertEqual(bytes.count, 8 + n + 12)
    // The data itself: little-endian F32, contiguous, in the order given.
    XCTAssertEqual(
      Array(bytes[(8 + n)...]), le32(Float(1).bitPattern) + le32(Float(2).bitPattern) + le32(Float(3).bitPattern))
  }

  func testNoMetadataAndNoTensors() throws {
    let path = dir + "/empty.safetensors"
    try write([], metadata: [:], to: path)
    let f = try SafeTensorsFile(path: path)
    XCTAssertEqual(f.metadata, [:])
    XCTAssertEqual(f.names, [])
    XCTAssertEqual(f.dataLength, 0)
  }

  // MARK: hand-built files, every dtype

  func testHandBuiltFileWidensEveryDtype() throws {
    let f16: [UInt16] = [0x3C00, 0xC000, 0x0001, 0x8000, 0x7BFF, 0x7C00, 0x3555]
    let bf16: [UInt16] = [0x3F80, 0x4049, 0xC2F7, 0x0001]
    let f64: [Double] = [1.0 / 3.0, -1e300, 0.5]
    let (header, data) = layout([
      ("half", "F16", [7], f16.flatMap(le16)),
      ("brain", "BF16", [2, 2], bf16.flatMap(le16)),
      ("double", "F64", [3], f64.flatMap { le64($0.bitPattern) }),
      ("i64", "I64", [2], le64(UInt64(bitPattern: -(1 << 40))) + le64(UInt64(16_777_217))),
      ("i32", "I32", [2], le32(UInt32(bitPattern: -7)) + le32(2_000_000_000)),
      ("i16", "I16", [1], le16(UInt16(bitPattern: -300))),
      ("i8", "I8", [2], [0x80, 0x7F]),
      ("u8", "U8", [2], [0xFF, 0x00]),
      ("bool", "BOOL", [3], [0, 1, 2]),
      ("f32", "F32", [1], le32(Float(-2.5).bitPattern)),
    ])
    // Trailing spaces after the JSON are allowed padding.
    let path = try handBuilt("hand.safetensors", header: header + "     ", data: data)
    let f = try SafeTensorsFile(path: path)
    XCTAssertEqual(f.names, ["half", "brain", "double", "i64", "i32", "i16", "i8", "u8", "bool", "f32"])
    XCTAssertEqual(f.entries["brain"]?.dtype, .BF16)
    XCTAssertEqual(f.entries["brain"]?.byteRange, 14..<22)
    XCTAssertEqual(
      bits(try f.floats("half")),
      bits([1.0, -2.0, 0x1p-24, -0.0, 65504, .infinity, 0.333251953125]))
    XCTAssertEqual(try f.floats("brain", expectedShape: [2, 2]), [1.0, 3.140625, -123.5, 0x1p-133])
    XCTAssertEqual(try f.floats("double"), [Float(1.0 / 3.0), -.infinity, 0.5])
    XCTAssertEqual(try f.floats("i64"), [-1_099_511_627_776, 16_777_216])
    XCTAssertEqual(try f.floats("i32"), [-7, 2_000_000_000])
    XCTAssertEqual(try f.floats("i16"), [-300])
    XCTAssertEqual(try f.floats("i8"), [-128, 127])
    XCTAssertEqual(try f.floats("u8"), [255, 0])
    XCTAssertEqual(try f.floats("bool"), [0, 1, 1])
    XCTAssertEqual(try f.floats("f32"), [-2.5])
  }

  /// All 65,536 F16 bit patterns read as Swift's own Float16 conversion gives them.
  func testEveryF16BitPatternMatchesFloat16() throws {
    let all = (0...UInt16.max).map { $0 }
    let (header, data) = layout([("all", "F16", [65536], all.flatMap(le16))])
    let f = try SafeTensorsFile(path: try handBuilt("f16.safetensors", header: header, data: data))
    let got = try f.floats("all")
    XCTAssertEqual(got.count, 65536)
    var mismatches = 0
    for (b, x) in zip(all, got) {
      let want = Float(Float16(bitPattern: b))
      if want.isNaN {
        // NaN keeps its sign and its payload in the top mantissa bits.
        if !x.isNaN || x.sign != want.sign || x.bitPattern & 0x003F_E000 != UInt32(b & 0x1FF) << 13 { mismatches += 1 }
      } else if x.bitPattern != want.bitPattern {
        mismatches += 1
      }
    }
    XCTAssertEqual(mismatches, 0)
  }

  // MARK: malformed files: the catalogue

  func testRejectsFileShorterThan8Bytes() throws {
    assertRejects(try raw("short.safetensors", [1, 2, 3]), "too short", "3 bytes")
    assertRejects(try raw("zero.safetensors", []), "too short")
  }

  func testRejectsHeaderLongerThanFile() throws {
    assertRejects(try handBuilt("trunc.safetensors", header: "{}", headerLength: 1000), "exceeds", "1000")
  }

  func testRejectsAbsurdHeaderLengthBeforeAllocating() throws {
    assertRejects(try handBuilt("huge.safetensors", header: "{}", headerLength: UInt64.max), "over the limit")
    assertRejects(
      try handBuilt("big.safetensors", header: "{}", headerLength: 16 << 20 + 1), "over the limit", "16777217")
  }

  /// A header of a million tiny entries is refused after counting them, before JSON parses it
  /// (parsing one took 12 s and 4 GB).
  func testRejectsAHeaderOfTooManyTensorsBeforeParsingIt() throws {
    let entry = #""t":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},"#
    let header = "{" + String(repeating: entry, count: 100_001).dropLast() + "}"
    let start = Date()
    assertRejects(
      try handBuilt("many.safetensors", header: header, headerLength: UInt64(header.utf8.count)), "100001 tensors",
      "100000")
    XCTAssertLessThan(Date().timeIntervalSince(start), 2)
  }

  func testRejectsHeaderThatIsNotUTF8() throws {
    let header: [UInt8] = Array("{\"w".utf8) + [0xFF, 0xFE] + Array("\": 1}".utf8)
    assertRejects(try raw("latin.safetensors", le64(UInt64(header.count)) + header), "UTF-8")
  }

  func testRejectsHeaderThatIsNotJSON() throws {
    assertRejects(try handBuilt("cut.safetensors", header: "{\"w\": {\"dtype\": "), "not valid JSON")
    assertRejects(try handBuilt("blank.safetensors", header: ""), "not valid JSON")
    assertRejects(try handBuilt("nul.safetensors", header: "{}\0\0"), "not valid JSON")
  }

  func testRejectsHeaderThatIsNotAnObject() throws {
    assertRejects(try handBuilt("array.safetensors", header: "[1, 2]"), "not an object")
  }

  func testRejectsEntryMissingAField() throws {
    try rejectsEntry(#""shape": [2], "data_offsets": [0, 8]"#, "missing \"dtype\"")
    try rejectsEntry(#""dtype": "F32", "data_offsets": [0, 8]"#, "missing \"shape\"")
    try rejectsEntry(#""dtype": "F32", "shape": [2]"#, "missing \"data_offsets\"")
  }

  func testRejectsFieldsOfTheWrongJSONType() throws {
    try rejectsEntry(#""dtype": 5, "shape": [2], "data_offsets": [0, 8]"#, "\"dtype\" must be a string")
    try rejectsEntry(#""dtype": "F32", "shape": "2", "data_offsets": [0, 8]"#, "\"shape\" must be an array")
    try rejectsEntry(#""dtype": "F32", "shape": [2], "data_offsets": [8]"#, "two integers")
    try rejectsEntry(#""dtype": "F32", "shape": [2], "data_offsets": ["0", "8"]"#, "not integers")
    try rejectsEntry(#""dtype": "F32", "shape": [2], "data_offsets": {"begin": 0}"#, "two integers")
    let path = try handBuilt("notobj.safetensors", header: #"{"w": 5}"#)
    assertRejects(path, "\"w\"", "must be an object")
  }

  func testRejectsUnknownDtype() throws {
    try rejectsEntry(#""dtype": "F8_E4M3", "shape": [8], "data_offsets": [0, 8]"#, "unknown dtype \"F8_E4M3\"")
    try rejectsEntry(#""dtype": "f32", "shape": [2], "data_offsets": [0, 8]"#, "unknown dtype")
  }

  func testRejectsNegativeDims() throws {
    try rejectsEntry(#""dtype": "F32", "shape": [-2], "data_offsets": [0, 8]"#, "negative")
  }

  func testRejectsNonIntegerAndOutOfRangeDims() throws {
    try rejectsEntry(#""dtype": "F32", "shape": [1.5], "data_offsets": [0, 8]"#, "not an integer")
    try rejectsEntry(#""dtype": "F32", "shape": [true, 2], "data_offsets": [0, 8]"#, "dimension 0", "not an integer")
    try rejectsEntry(#""dtype": "F32", "shape": [2, null], "data_offsets": [0, 8]"#, "dimension 1", "not an integer")
    try rejectsEntry(#""dtype": "F32", "shape": [1e30], "data_offsets": [0, 8]"#, "not an integer in range")
    try rejectsEntry(
      #""dtype": "F32", "shape": [1180591620717411303424], "data_offsets": [0, 8]"#, "not an integer in range")
    try rejectsEntry(#""dtype": "F32", "shape": [2], "data_offsets": [0, 1e30]"#, "not integers in range")
  }

  func testRejectsShapeWhoseProductOverflows() throws {
    try rejectsEntry(#""dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 8]"#, "overflows")
    try rejectsEntry(#""dtype": "F64", "shape": [4611686018427387904], "data_offsets": [0, 8]"#, "overflows")
  }

  func testRejectsReversedOffsets() throws {
    try rejectsEntry(#""dtype": "F32", "shape": [2], "data_offsets": [8, 0]"#, "[8, 0)", "reversed")
  }

  func testRejectsNegativeOffsets() throws {
    try rejectsEntry(#""dtype": "F32", "shape": [2], "data_offsets": [-8, 0]"#, "negative")
  }

  func testRejectsOffsetsBeyondTheBuffer() throws {
    try rejectsEntry(#""dtype": "F32", "shape": [4], "data_offsets": [0, 16]"#, "beyond the data buffer", "8 bytes")
  }

  func testRejectsByteLengthThatDisagreesWithShape() throws {
    try rejectsEntry(#""dtype": "F32", "shape": [3], "data_offsets": [0, 8]"#, "needs 12 bytes")
    try rejectsEntry(#""dtype": "F16", "shape": [2, 2], "data_offsets": [0, 4]"#, data: [0, 0, 0, 0], "needs 8 bytes")
  }

  func testRejectsOverlappingTensors() throws {
    let header =
      #"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}"#
    assertRejects(
      try handBuilt("overlap.safetensors", header: header, data: .init(repeating: 0, count: 12)), "overlap", "\"a\"",
      "\"b\"")
    // An empty tensor placed inside another one is out of order too.
    let inside =
      #"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "e": {"dtype": "F32", "shape": [0], "data_offsets": [4, 4]}}"#
    assertRejects(
      try handBuilt("inside.safetensors", header: inside, data: .init(repeating: 0, count: 8)), "overlap", "\"e\"")
  }

  func testRejectsUncoveredBytesBetweenTensors() throws {
    let header =
      #"{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}}"#
    assertRejects(
      try handBuilt("gap.safetensors", header: header, data: .init(repeating: 0, count: 12)), "[4, 8)", "uncovered")
  }

  func testRejectsTrailingBytes() throws {
    let header = #"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}"#
    assertRejects(
      try handBuilt("tail.safetensors", header: header, data: .init(repeating: 0, count: 11)), "3 trailing bytes")
    assertRejects(try handBuilt("none.safetensors", header: "{}", data: [1]), "trailing")
  }

  func testRejectsDuplicateTensorNames() throws {
    let header =
      #"{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "\u0061": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}"#
    assertRejects(
      try handBuilt("dup.safetensors", header: header, data: .init(repeating: 0, count: 8)), "\"a\"", "duplicate")
    // The same name nested inside different objects is fine.
    let nested = #"{"__metadata__": {"a": "1"}, "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}"#
    XCTAssertEqual(
      try SafeTensorsFile(path: try handBuilt("nested.safetensors", header: nested, data: [0, 0, 0, 0])).names, ["a"])
  }

  func testRejectsMetadataThatIsNotStrings() throws {
    let header = #"{"__metadata__": {"epoch": 3}}"#
    assertRejects(try handBuilt("meta.safetensors", header: header), "__metadata__", "\"epoch\"", "must be a string")
    assertRejects(
      try handBuilt("meta2.safetensors", header: #"{"__metadata__": [1]}"#), "__metadata__", "object of strings")
  }

  func testRejectsMissingFileAndFolders() throws {
    assertRejects(dir + "/absent.safetensors", "cannot open")
    try FileManager.default.createDirectory(atPath: dir + "/folder.safetensors", withIntermediateDirectories: false)
    assertRejects(dir + "/folder.safetensors", "not a regular file")
  }

  func testFloatsOfAnAbsentNameListsPresentOnes() throws {
    let path = dir + "/few.safetensors"
    try write([("h.0.w", [1], [1]), ("h.0.b", [1], [2])], to: path)
    let f = try SafeTensorsFile(path: path)
    XCTAssertThrowsError(try f.floats("h.9.w")) { error in
      self.check(error, path: path, ["no tensor \"h.9.w\"", "\"h.0.w\"", "\"h.0.b\""], file: #filePath, line: #line)
    }
  }

  func testFloatsChecksTheExpectedShape() throws {
    let path = dir + "/shape.safetensors"
    try write([("h.0.attn.c_attn.weight", [2, 3], [1, 2, 3, 4, 5, 6])], to: path)
    let f = try SafeTensorsFile(path: path)
    XCTAssertEqual(try f.floats("h.0.attn.c_attn.weight", expectedShape: [2, 3]), [1, 2, 3, 4, 5, 6])
    XCTAssertThrowsError(try f.floats("h.0.attn.c_attn.weight", expectedShape: [3, 2])) { error in
      self.check(
        error, path: path, ["h.0.attn.c_attn.weight", "expected shape [3, 2]", "found shape [2, 3]"], file: #filePath,
        line: #line)
    }
  }

  // MARK: atomic write

  func testFailedWriteLeavesTheExistingFileUntouched() throws {
    let path = dir + "/ckpt.safetensors"
    try write([("w", [2], [1, 2])], metadata: ["step": "1"], to: path)
    let before = try Data(contentsOf: URL(fileURLWithPath: path))

    // The buffer holds 5 values, the shape asks for 6.
    XCTAssertThrowsError(try write([("ok", [1], [0]), ("w", [2, 3], [1, 2, 3, 4, 5])], to: path)) { error in
      self.check(error, path: path, ["\"w\"", "needs 6 values", "holds 5"], file: #filePath, line: #line)
    }
    XCTAssertThrowsError(try write([("w", [1], [0]), ("w", [1], [0])], to: path)) { error in
      self.check(error, path: path, ["duplicate"], file: #filePath, line: #line)
    }
    XCTAssertThrowsError(try write([("__metadata__", [1], [0])], to: path)) { error in
      self.check(error, path: path, ["reserved"], file: #filePath, line: #line)
    }
    XCTAssertThrowsError(try write([("w", [-1], [])], to: path)) { error in
      self.check(error, path: path, ["negative"], file: #filePath, line: #line)
    }
    XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: path)), before)
    XCTAssertEqual(try folderListing(), ["ckpt.safetensors"])
    XCTAssertEqual(try SafeTensorsFile(path: path).metadata, ["step": "1"])
  }

  func testFailedRenameRemovesTheTemporaryFile() throws {
    // A folder (not empty) stands where the file should go: the data is written, the rename fails.
    let path = dir + "/taken.safetensors"
    try FileManager.default.createDirectory(atPath: path + "/inside", withIntermediateDirectories: true)
    XCTAssertThrowsError(try write([("w", [2], [1, 2])], to: path)) { error in
      self.check(error, path: path, ["cannot rename"], io: true, file: #filePath, line: #line)
    }
    XCTAssertEqual(try folderListing(), ["taken.safetensors"], "temporary file removed")
    XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: path), ["inside"])
  }

  func testWriteIntoMissingFolderFails() throws {
    let path = dir + "/no/such/folder/out.safetensors"
    XCTAssertThrowsError(try write([("w", [1], [1])], to: path)) { error in
      self.check(error, path: path, ["cannot create temporary file"], io: true, file: #filePath, line: #line)
    }
  }

  func testSuccessfulWriteReplacesTheFile() throws {
    let path = dir + "/ckpt.safetensors"
    try write([("w", [2], [1, 2])], metadata: ["step": "1"], to: path)
    let old = try SafeTensorsFile(path: path)  // an open reader keeps its own (old) file
    try write([("w", [3], [7, 8, 9]), ("b", [1], [4])], metadata: ["step": "2"], to: path)
    let new = try SafeTensorsFile(path: path)
    XCTAssertEqual(new.metadata, ["step": "2"])
    XCTAssertEqual(try new.floats("w"), [7, 8, 9])
    XCTAssertEqual(try new.floats("b"), [4])
    XCTAssertEqual(try old.floats("w"), [1, 2])
    XCTAssertEqual(try folderListing(), ["ckpt.safetensors"])
  }
}
