import Foundation
import XCTest

@testable import HydraRuntime

/// The TensorBoard event files: CRC-32C against published values, the TFRecord framing read back by
/// a reader written here from the format's description, and what OutputFolder puts in them.
final class TensorBoardTests: XCTestCase {
  // MARK: - CRC-32C

  func testCRC32CMatchesPublishedCheckValues() {
    // The "check" value of the CRC-32C catalogue entry.
    XCTAssertEqual(CRC32C.checksum(Array("123456789".utf8)), 0xE306_9283)
    XCTAssertEqual(CRC32C.checksum([UInt8]()), 0)
    // RFC 3720 (iSCSI), B.4: 32 bytes of zeros, of ones, ascending, descending; an iSCSI PDU.
    XCTAssertEqual(CRC32C.checksum([UInt8](repeating: 0, count: 32)), 0x8A91_36AA)
    XCTAssertEqual(CRC32C.checksum([UInt8](repeating: 0xFF, count: 32)), 0x62A8_AB43)
    XCTAssertEqual(CRC32C.checksum((0..<32).map { UInt8($0) }), 0x46DD_794E)
    XCTAssertEqual(CRC32C.checksum((0..<32).reversed().map { UInt8($0) }), 0x113F_DB5C)
    var pdu = [UInt8](repeating: 0, count: 48)
    for (i, b) in [(0, 0x01), (1, 0xC0), (16, 0x14), (22, 0x04), (27, 0x14), (31, 0x18), (32, 0x28), (40, 0x02)] {
      pdu[i] = UInt8(b)
    }
    XCTAssertEqual(CRC32C.checksum(pdu), 0xD996_3A56)
  }

  func testMaskRotatesAndAddsTheConstant() {
    XCTAssertEqual(CRC32C.masked(0), 0xA282_EAD8)
    // 1 rotated right by 15 is 1 << 17.
    XCTAssertEqual(CRC32C.masked(1), 0x0002_0000 &+ 0xA282_EAD8)
    XCTAssertEqual(CRC32C.masked(0x8000), 1 &+ 0xA282_EAD8)
  }

  // MARK: - Framing

  func testFramesReadBackWithTheirLengthsAndChecksums() throws {
    let payloads: [[UInt8]] = [[], Array("a".utf8), (0..<300).map { UInt8($0 % 251) }]
    var bytes: [UInt8] = []
    for p in payloads { TFRecord.append(p, to: &bytes) }
    XCTAssertEqual(bytes.count, payloads.reduce(0) { $0 + $1.count + 16 })
    XCTAssertEqual(try TFRecordReader.records(bytes).records, payloads)
    // The first frame by hand: length 0 as 8 little-endian bytes, then its masked CRC.
    XCTAssertEqual(Array(bytes[0..<8]), [0, 0, 0, 0, 0, 0, 0, 0])
    XCTAssertEqual(TFRecordReader.uint32(bytes, 8), CRC32C.masked(CRC32C.checksum([UInt8](repeating: 0, count: 8))))
    // A flipped bit in the data is caught; a cut last frame is a truncated tail, not an error.
    var bad = bytes
    bad[bad.count - 5] ^= 1
    XCTAssertThrowsError(try TFRecordReader.records(bad))
    let cut = try TFRecordReader.records(Array(bytes.dropLast(3)))
    XCTAssertEqual(cut.records, Array(payloads.prefix(2)))
    XCTAssertTrue(cut.truncated)
  }

  // MARK: - Event files

  func testAnEventFileHoldsTheVersionAStartAndTheScalars() throws {
    let folder = try temporaryFolder() + "/m007"
    let file = try EventFile(folder: folder, firstStep: 1, wallTime: 1_700_000_000.25)
    try file.add(step: 3, [(tag: "loss/train", value: 2.5), (tag: "lr", value: 0)], wallTime: 1_700_000_001)
    try file.add(step: 4, [(tag: "loss/val", value: -0.125)], wallTime: 1_700_000_002)
    try file.finish()
    XCTAssertEqual(file.path, folder + "/events.out.tfevents.1700000000." + EventFile.host)
    let records = try TFRecordReader.records(Array(try Data(contentsOf: URL(fileURLWithPath: file.path)))).records
    let events = try records.map { try TBEvent(serializedBytes: $0) }
    XCTAssertEqual(events.count, 4)
    XCTAssertEqual(events[0].fileVersion, "brain.Event:2")
    XCTAssertEqual(events[0].wallTime, 1_700_000_000.25)
    XCTAssertEqual(events[1].sessionLog.status, .start)
    XCTAssertEqual(events[1].step, 1)
    XCTAssertEqual(events[2].step, 3)
    XCTAssertEqual(events[2].summary.value.map(\.tag), ["loss/train", "lr"])
    XCTAssertEqual(events[2].summary.value.map(\.simpleValue), [2.5, 0])
    XCTAssertEqual(events[3].summary.value.map(\.simpleValue), [-0.125])

    // The same record decoded by hand from the wire format, independent of the generated code:
    // Event.step (field 2, varint) and Event.summary (5) > Summary.value (1) > Value.simple_value
    // (2, fixed32) and Value.tag (1).
    let fields = try Wire.fields(records[2])
    XCTAssertEqual(fields.first { $0.number == 2 }?.varint, 3)
    XCTAssertEqual(fields.first { $0.number == 1 }?.fixed64.map { Double(bitPattern: $0) }, 1_700_000_001)
    let summary = try XCTUnwrap(fields.first { $0.number == 5 }?.bytes)
    let values = try Wire.fields(summary).filter { $0.number == 1 }.map { try Wire.fields($0.bytes!) }
    XCTAssertEqual(values.count, 2)
    XCTAssertEqual(values[0].first { $0.number == 1 }?.bytes.map { String(decoding: $0, as: UTF8.self) }, "loss/train")
    // 0 is written too (simple_value sits in a oneof): TensorBoard skips a Value without one.
    XCTAssertEqual(values.map { $0.first { $0.number == 2 }?.fixed32.map { Float(bitPattern: $0) } }, [2.5, 0])
    XCTAssertThrowsError(try file.add(step: 5, [(tag: "x", value: 1)])) { XCTAssert($0 is WriteError) }
  }

  func testANewFileOfTheSameSecondIsNamedPastTheOldOne() throws {
    let folder = try temporaryFolder()
    let a = try EventFile(folder: folder, firstStep: 1, wallTime: 1_700_000_000)
    let b = try EventFile(folder: folder, firstStep: 5, wallTime: 1_700_000_000.5)
    XCTAssertTrue(a.path.hasSuffix(".1700000000." + EventFile.host))
    XCTAssertTrue(b.path.hasSuffix(".1700000001." + EventFile.host))
    XCTAssertLessThan(a.path, b.path)
  }

  func testAnUnwritableFolderIsAWriteError() throws {
    let folder = try temporaryFolder()
    let blocker = folder + "/file"
    try Data("x".utf8).write(to: URL(fileURLWithPath: blocker))
    XCTAssertThrowsError(try EventFile(folder: blocker + "/m000", firstStep: 1)) { error in
      XCTAssertTrue(error is WriteError, "\(error)")
    }
    let output = try OutputFolder(path: folder + "/out", resolvedJob: "")
    try Data("x".utf8).write(to: URL(fileURLWithPath: output.tensorBoardFolder))
    XCTAssertThrowsError(
      try output.record(model: "m000", step: 1, split: "train", loss: 1, accuracy: nil, lr: 0.1, seconds: 0)
    ) { XCTAssertTrue($0 is WriteError, "\($0)") }
  }

  /// Every metrics.csv row is in the model's event file, and a resumed run's file starts past the
  /// step it resumed at, so that TensorBoard's view equals the kept metrics.csv.
  func testOutputFolderRowsAndAResumeAsTensorBoardSeesThem() throws {
    let folder = try temporaryFolder() + "/out"
    do {
      let output = try OutputFolder(path: folder, resolvedJob: "")
      for step in 1...6 {
        try output.record(
          model: "m000", step: step, split: "train", loss: 3 - Double(step) * 0.1, accuracy: nil, lr: 0.01,
          seconds: 0)
      }
      try output.record(model: "m000", step: 3, split: "val", loss: 2.5, accuracy: 0.25, lr: 0.01, seconds: 0)
      try output.record(model: "m001", step: 1, split: "train", loss: 9, accuracy: nil, lr: 0.5, seconds: 0)
    }
    // Killed at step 6 after a checkpoint of step 4: the resumed run trains 5 and 6 again.
    let resumed = try OutputFolder(path: folder, resolvedJob: "", append: true)
    try resumed.keepMetrics(upTo: ["m000": 4, "m001": 1])
    for step in 5...6 {
      try resumed.record(model: "m000", step: step, split: "train", loss: 1, accuracy: nil, lr: 0.02, seconds: 0)
    }
    try resumed.finishEventFiles()

    let files = try FileManager.default.contentsOfDirectory(atPath: folder + "/tensorboard/m000").sorted()
    XCTAssertEqual(files.count, 2)
    XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: folder + "/tensorboard/m001").count, 1)
    let view = try TensorBoardView(folder: folder + "/tensorboard/m000")
    XCTAssertEqual(view.purges, [1, 5])
    XCTAssertEqual(view.scalars["loss/train"]?.map(\.step), [1, 2, 3, 4, 5, 6])
    XCTAssertEqual(view.scalars["loss/train"]?.map(\.value), [2.9, 2.8, 2.7, 2.6, 1, 1].map { Float($0) })
    XCTAssertEqual(view.scalars["lr"]?.map(\.value), [0.01, 0.01, 0.01, 0.01, 0.02, 0.02].map { Float($0) })
    XCTAssertEqual(view.scalars["loss/val"]?.map(\.step), [3])
    XCTAssertEqual(view.scalars["accuracy/val"]?.map(\.value), [0.25])
    assertMatchesMetrics(folder)
  }
}

// MARK: - An independent reader

/// TFRecord frames, read as the format describes them.
enum TFRecordReader {
  struct Corrupt: Error { let offset: Int, what: String }

  static func uint32(_ b: [UInt8], _ at: Int) -> UInt32 { (0..<4).reduce(0) { $0 | UInt32(b[at + $1]) << (8 * $1) } }
  static func uint64(_ b: [UInt8], _ at: Int) -> UInt64 { (0..<8).reduce(0) { $0 | UInt64(b[at + $1]) << (8 * $1) } }

  /// The records, and whether the bytes end inside one (a file still being written, or cut).
  static func records(_ b: [UInt8]) throws -> (records: [[UInt8]], truncated: Bool) {
    var out: [[UInt8]] = [], at = 0
    while at < b.count {
      guard at + 12 <= b.count else { return (out, true) }
      guard uint32(b, at + 8) == CRC32C.masked(CRC32C.checksum(b[at..<(at + 8)])) else {
        throw Corrupt(offset: at, what: "length checksum")
      }
      let n = Int(uint64(b, at))
      guard at + 12 + n + 4 <= b.count else { return (out, true) }
      let data = Array(b[(at + 12)..<(at + 12 + n)])
      guard uint32(b, at + 12 + n) == CRC32C.masked(CRC32C.checksum(data)) else {
        throw Corrupt(offset: at, what: "data checksum")
      }
      out.append(data)
      at += 16 + n
    }
    return (out, false)
  }
}

/// Protocol-buffer wire format, enough to walk an Event by hand.
enum Wire {
  struct Field {
    var number: Int, varint: UInt64?, fixed64: UInt64?, fixed32: UInt32?, bytes: [UInt8]?
  }
  struct Bad: Error {}

  static func fields(_ b: [UInt8]) throws -> [Field] {
    var at = 0, out: [Field] = []
    func varint() throws -> UInt64 {
      var v: UInt64 = 0, shift: UInt64 = 0
      while true {
        guard at < b.count, shift < 64 else { throw Bad() }
        let byte = b[at]
        at += 1
        v |= UInt64(byte & 0x7F) << shift
        if byte < 0x80 { return v }
        shift += 7
      }
    }
    while at < b.count {
      let key = try varint()
      var f = Field(number: Int(key >> 3), varint: nil, fixed64: nil, fixed32: nil, bytes: nil)
      switch key & 7 {
      case 0: f.varint = try varint()
      case 1:
        guard at + 8 <= b.count else { throw Bad() }
        f.fixed64 = TFRecordReader.uint64(b, at)
        at += 8
      case 2:
        let n = Int(try varint())
        guard at + n <= b.count else { throw Bad() }
        f.bytes = Array(b[at..<(at + n)])
        at += n
      case 5:
        guard at + 4 <= b.count else { throw Bad() }
        f.fixed32 = TFRecordReader.uint32(b, at)
        at += 4
      default: throw Bad()
      }
      out.append(f)
    }
    return out
  }
}

/// A model's scalars as TensorBoard shows them: its event files in name order, each
/// `SessionLog.START` dropping the points at its step or later that earlier records made.
struct TensorBoardView {
  var scalars: [String: [(step: Int, value: Float)]] = [:]
  /// The step of each START, in reading order.
  var purges: [Int] = []

  init(folder: String) throws {
    let names = try FileManager.default.contentsOfDirectory(atPath: folder).filter { $0.contains("tfevents") }
    for name in names.sorted() {
      let bytes = Array(try Data(contentsOf: URL(fileURLWithPath: folder + "/" + name)))
      for record in try TFRecordReader.records(bytes).records {
        let e = try TBEvent(serializedBytes: record)
        if e.sessionLog.status == .start {
          purges.append(Int(e.step))
          for tag in scalars.keys { scalars[tag]!.removeAll { $0.step >= Int(e.step) } }
        }
        for v in e.summary.value { scalars[v.tag, default: []].append((step: Int(e.step), value: v.simpleValue)) }
      }
    }
  }
}

/// Each model's TensorBoard view holds exactly its metrics.csv rows: the same steps, the values as
/// float32.
func assertMatchesMetrics(
  _ output: String, file: StaticString = #filePath, line: UInt = #line
) {
  do {
    let rows = try String(contentsOfFile: output + "/metrics.csv", encoding: .utf8).split(separator: "\n").dropFirst()
      .map { $0.split(separator: ",", omittingEmptySubsequences: false).map(String.init) }
    for model in Set(rows.map { $0[0] }) {
      let view = try TensorBoardView(folder: output + "/tensorboard/" + model)
      for split in ["train", "val"] {
        let mine = rows.filter { $0[0] == model && $0[2] == split }
        let seen = view.scalars["loss/" + split] ?? []
        XCTAssertEqual(seen.map(\.step), mine.map { Int($0[1])! }, "\(model) \(split)", file: file, line: line)
        for (s, r) in zip(seen, mine) where !(s.value.isNaN && Double(r[3])!.isNaN) {
          // metrics.csv keeps 6 decimals; the event file a float32.
          XCTAssertEqual(
            Double(s.value), Double(r[3])!, accuracy: 1e-6 + 1e-6 * abs(Double(r[3])!), file: file, line: line)
        }
      }
    }
  } catch {
    XCTFail("\(error)", file: file, line: line)
  }
}
