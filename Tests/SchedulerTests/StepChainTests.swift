import HydraRuntime
import XCTest

/// The order of a step, written out by hand for three shards.
final class StepChainTests: XCTestCase {
  func testThreeShardChainByHand() {
    let chain = StepChain(shards: 3)
    XCTAssertEqual(chain.length, 6)
    let expected: [(Int, Direction)] = [
      (0, .forward), (1, .forward), (2, .forward), (2, .backward), (1, .backward), (0, .backward),
    ]
    for (p, (shard, direction)) in expected.enumerated() {
      let task = chain.task(at: p, model: 4, step: 7)
      XCTAssertEqual(task, ShardTask(model: 4, shard: shard, direction: direction, step: 7), "position \(p)")
      XCTAssertEqual(chain.position(of: task), p)
      XCTAssertEqual(chain.endsStep(task), p == 5)
      XCTAssertEqual(chain.computesLoss(task), p == 2)
      XCTAssertEqual(chain.next(after: task), p < 5 ? chain.task(at: p + 1, model: 4, step: 7) : nil)
    }
    // From the last forward: 3 + (30 + 20 + 10).
    XCTAssertEqual(chain.seconds(from: 2, forward: [1, 2, 3], backward: [10, 20, 30]), 63)
    XCTAssertEqual(chain.seconds(from: 0, forward: [1, 2, 3], backward: [10, 20, 30]), 66)
    XCTAssertEqual(chain.seconds(from: 5, forward: [1, 2, 3], backward: [10, 20, 30]), 10)
  }

  func testOneShardChain() {
    let chain = StepChain(shards: 1)
    let f = chain.task(at: 0, model: 0, step: 0)
    XCTAssertTrue(chain.computesLoss(f))
    XCTAssertEqual(chain.next(after: f), ShardTask(model: 0, shard: 0, direction: .backward, step: 0))
    XCTAssertNil(chain.next(after: chain.task(at: 1, model: 0, step: 0)))
  }
}
