import Foundation
import XCTest

@testable import HydraPluginAPI

/// The pages of large tensor buffers are kept for reuse within a bound: kept + live bytes never
/// exceed the most live bytes ever held. Checked against sizes tracked here, independently.
final class MappedBuffersTests: XCTestCase {
  private let page = Int(sysconf(Int32(_SC_PAGESIZE)))
  private func rounded(_ n: Int) -> Int { (n + page - 1) / page * page }

  func testAFreedBufferComesBackZeroedForTheSameSize() {
    let cache = MappedBuffers()
    let bytes = 1 << 20
    let a = cache.take(bytes, zeroed: true)
    a.initializeMemory(as: UInt8.self, repeating: 7, count: bytes)
    cache.give(a, bytes)
    // A size that rounds to the same pages takes the same buffer, zeroed again.
    let b = cache.take(bytes - 100, zeroed: true)
    XCTAssertEqual(a, b, "the kept buffer is reused")
    let bytesB = UnsafeRawBufferPointer(start: b, count: bytes - 100)
    XCTAssertTrue(bytesB.allSatisfy { $0 == 0 }, "a reused buffer asked for zeroed is zero")
    let stats = cache.statistics
    XCTAssertEqual(stats.reused, 1)
    XCTAssertEqual(stats.mapped, 1)
    XCTAssertEqual(stats.liveBytes, bytes)
    XCTAssertEqual(stats.keptBytes, 0)
    cache.give(b, bytes - 100)
    cache.trim()
    XCTAssertEqual(cache.statistics.keptBytes, 0)
  }

  /// Pages of `bytes` at `p` that are resident (mincore), counted.
  private func residentPages(_ p: UnsafeMutableRawPointer, _ bytes: Int) -> Int {
    let pages = (bytes + page - 1) / page
    var vec = [UInt8](repeating: 0, count: pages)
    XCTAssertEqual(mincore(p, bytes, &vec), 0)
    return vec.filter { $0 & 1 == 1 }.count
  }

  func testBuffersMappedInADeferringBlockAreFaultedInWhenItEnds() throws {
    // Two threads at once (ranks as threads build models together), 3 buffers each, one of them
    // large enough to be cut into pieces.
    let cache = MappedBuffers()
    let sizes = [1 << 20, 9 << 20, (256 << 10) + 3]
    // One slot per thread, written by that thread only.
    let before = UnsafeMutableBufferPointer<[Int]>.allocate(capacity: 2)
    let buffers = UnsafeMutableBufferPointer<[UnsafeMutableRawPointer]>.allocate(capacity: 2)
    _ = before.initialize(from: [[], []])
    _ = buffers.initialize(from: [[], []])
    defer {
      before.deallocate()
      buffers.deallocate()
    }
    DispatchQueue.concurrentPerform(iterations: 2) { t in
      buffers[t] = cache.deferringPopulation {
        let made = sizes.map { cache.take($0, zeroed: true) }
        before[t] = zip(made, sizes).map { residentPages($0, $1) }
        return made
      }
    }
    for t in 0..<2 {
      // Inside the block nothing was faulted in; after it every page is, and reads zero.
      XCTAssertEqual(before[t], [0, 0, 0], "thread \(t)")
      for (p, bytes) in zip(buffers[t], sizes) {
        XCTAssertEqual(residentPages(p, bytes), (bytes + page - 1) / page)
        XCTAssertTrue(UnsafeRawBufferPointer(start: p, count: bytes).allSatisfy { $0 == 0 })
        cache.give(p, bytes)
      }
    }
    // Outside a block a buffer is faulted in at once.
    let q = cache.take(1 << 20, zeroed: true)
    XCTAssertEqual(residentPages(q, 1 << 20), (1 << 20) / page)
    cache.give(q, 1 << 20)
    cache.trim()
  }

  func testKeptAndLiveBytesStayWithinThePeakOfLiveBytes() {
    let cache = MappedBuffers()
    var rng = SplitMix64(seed: 11)
    let sizes = [256 << 10, (300 << 10) + 5, 1 << 20, 3 << 20]
    var live: [(UnsafeMutableRawPointer, Int)] = []
    var liveBytes = 0
    var peak = 0
    for step in 0..<2_000 {
      if live.isEmpty || (rng.nextInt(below: 5) < 3 && live.count < 12) {
        let n = sizes[rng.nextInt(below: sizes.count)]
        let p = cache.take(n, zeroed: step % 2 == 0)
        if step % 2 == 0 {
          XCTAssertTrue(UnsafeRawBufferPointer(start: p, count: n).allSatisfy { $0 == 0 }, "step \(step)")
        }
        // Every live buffer is written whole: two live buffers sharing pages would show here.
        p.initializeMemory(as: UInt8.self, repeating: UInt8(truncatingIfNeeded: step), count: n)
        live.append((p, n))
        liveBytes += rounded(n)
        peak = max(peak, liveBytes)
      } else {
        let (p, n) = live.remove(at: rng.nextInt(below: live.count))
        cache.give(p, n)
        liveBytes -= rounded(n)
      }
      let s = cache.statistics
      XCTAssertEqual(s.liveBytes, liveBytes, "step \(step)")
      XCTAssertEqual(s.peakLiveBytes, peak, "step \(step)")
      XCTAssertLessThanOrEqual(s.liveBytes + s.keptBytes, peak, "step \(step)")
    }
    for (p, n) in live { cache.give(p, n) }
    let s = cache.statistics
    XCTAssertGreaterThan(s.reused, s.mapped, "most buffers come from kept pages")
    XCTAssertEqual(s.liveBytes, 0)
    XCTAssertLessThanOrEqual(s.keptBytes, peak)
    cache.trim()
  }

  /// Through `Tensor`: a large tensor allocated where a freed one was reads zero.
  func testATensorReusingPagesStartsAtZero() throws {
    let count = 1 << 18  // 1 MiB
    let before = MappedBuffers.shared.statistics.reused
    do {
      let t = try Tensor(shape: [count])
      t.data.update(repeating: 3, count: count)
    }
    let u = try Tensor(shape: [count])
    XCTAssertGreaterThan(MappedBuffers.shared.statistics.reused, before)
    XCTAssertTrue(u.buffer.allSatisfy { $0 == 0 })
  }
}
