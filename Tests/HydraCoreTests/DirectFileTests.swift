import Foundation
import XCTest

@testable import HydraCore

/// Files written past the page cache hold exactly the bytes put, in order, whatever the sizes of
/// the pieces: around the 4 KiB alignment, around the staging buffer's size, and a tail that is
/// not a whole block (written padded, then cut to length).
final class DirectFileTests: XCTestCase {
  func testTheFileHoldsExactlyTheBytesPutWhateverThePieces() throws {
    let dir = NSTemporaryDirectory() + "hydra-direct-\(UUID().uuidString)"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let chunk = DirectFile.chunk
    let cases: [[Int]] = [[], [1], [4095, 1, 4097], [chunk - 3, 5, chunk + 7, 3], [2 * chunk], [chunk, 4096]]
    for (c, sizes) in cases.enumerated() {
      let path = dir + "/\(c).bin"
      let file = try DirectFile(path: path)
      var expected: [UInt8] = []
      var x: UInt32 = 12345
      for n in sizes {
        var piece = [UInt8](repeating: 0, count: n)
        for i in 0..<n {
          x = x &* 1_103_515_245 &+ 12345
          piece[i] = UInt8(truncatingIfNeeded: x >> 16)
        }
        try piece.withUnsafeBytes { try file.put($0) }
        expected += piece
      }
      try file.finish()
      let written = try Data(contentsOf: URL(fileURLWithPath: path))
      XCTAssertEqual(written.count, expected.count, "case \(c): \(sizes)")
      XCTAssertTrue(written.elementsEqual(expected), "case \(c): \(sizes)")
    }
    // An existing file is never overwritten.
    XCTAssertThrowsError(try DirectFile(path: dir + "/1.bin"))
  }
}
