import HydraRuntime
import HydraSchedulers
import HydraSelection
import XCTest

/// The built-in selection policies on results chosen by hand.
final class SelectionPolicyTests: XCTestCase {
  func result(_ model: Int, _ rung: Int, _ score: Double) -> RungResult {
    RungResult(model: model, rung: rung, step: 2 << rung, score: score)
  }

  func testRungsAreMinStepsTimesPowersOfEtaBelowTheSteps() {
    XCTAssertEqual(Rungs(minSteps: 10, reductionFactor: 3).steps(below: 100), [10, 30, 90])
    XCTAssertEqual(Rungs(minSteps: 10, reductionFactor: 3).steps(below: 90), [10, 30])
    XCTAssertEqual(Rungs(minSteps: 5, reductionFactor: 2).steps(below: 5), [])
    XCTAssertEqual(Rungs(minSteps: 1, reductionFactor: 2).steps(below: 9), [1, 2, 4, 8])
    // No overflow however large the factor.
    // 2^40 · 1000^3 would overflow 64 bits: the rungs end before it.
    XCTAssertEqual(
      Rungs(minSteps: 1 << 40, reductionFactor: 1000).steps(below: .max),
      [1 << 40, (1 << 40) * 1000, (1 << 40) * 1_000_000])
  }

  /// Nine models, eta 3: at rung 0 the three best of nine go on (once all nine are in), at rung 1
  /// the best of those three.
  func testSuccessiveHalvingWaitsForTheRungThenKeepsTheBestThird() throws {
    let sha = SuccessiveHalving()
    try sha.start(SelectionSetup(models: 9, rungSteps: Array(repeating: [2, 6], count: 9), reductionFactor: 3))
    let scores = [5.0, 1.0, 7.0, 3.0, 9.0, 2.0, 8.0, 4.0, 6.0]
    for m in 0..<8 {
      XCTAssertEqual(sha.reached(result(m, 0, scores[m])), [m: .pause], "model \(m) waits for the rung")
    }
    // The ninth completes the rung: models 1, 5, 3 (scores 1, 2, 3) go on, the rest stop.
    let decided = sha.reached(result(8, 0, scores[8]))
    var expected: [Int: SelectionDecision] = [:]
    for m in 0..<9 { expected[m] = [1, 5, 3].contains(m) ? .proceed : .stop }
    XCTAssertEqual(decided, expected)
    XCTAssertEqual(sha.reached(result(3, 1, 0.5)), [3: .pause])
    XCTAssertEqual(sha.reached(result(1, 1, 0.7)), [1: .pause])
    XCTAssertEqual(sha.reached(result(5, 1, 0.6)), [3: .proceed, 5: .stop, 1: .stop])
  }

  /// A model that ends (diverged) before the rung is not waited for; ties go to the lower index.
  func testSuccessiveHalvingDoesNotWaitForAModelThatEnded() throws {
    let sha = SuccessiveHalving()
    try sha.start(SelectionSetup(models: 4, rungSteps: Array(repeating: [2], count: 4), reductionFactor: 2))
    XCTAssertEqual(sha.reached(result(0, 0, 1.0)), [0: .pause])
    XCTAssertEqual(sha.reached(result(2, 0, 1.0)), [2: .pause])
    XCTAssertEqual(sha.reached(result(3, 0, 3.0)), [3: .pause])
    // Three results: max(1, 3 / 2) = 1 goes on, the lower index of the tie.
    XCTAssertEqual(sha.ended(model: 1), [0: .proceed, 2: .stop, 3: .stop])
  }

  /// A model with fewer steps has fewer rungs: it is not expected at the rungs past its end.
  func testSuccessiveHalvingWithModelsOfDifferentLengths() throws {
    let sha = SuccessiveHalving()
    try sha.start(SelectionSetup(models: 3, rungSteps: [[2, 4], [2], [2, 4]], reductionFactor: 2))
    _ = sha.reached(result(0, 0, 1.0))
    _ = sha.reached(result(1, 0, 0.5))
    // Keep max(1, 3 / 2) = 1: model 1 (which has no rung 1, so rung 1 expects no one).
    XCTAssertEqual(sha.reached(result(2, 0, 2.0)), [1: .proceed, 0: .stop, 2: .stop])
  }

  /// ASHA decides at once: the first result at a rung goes on; later ones go on when they are in
  /// the best max(1, n / eta) of the n results so far, themselves included.
  func testAsyncSuccessiveHalvingNeverWaits() throws {
    let asha = AsyncSuccessiveHalving()
    try asha.start(SelectionSetup(models: 6, rungSteps: Array(repeating: [2], count: 6), reductionFactor: 3))
    XCTAssertEqual(asha.reached(result(0, 0, 5.0)), [0: .proceed])  // 1 result: keep 1
    XCTAssertEqual(asha.reached(result(1, 0, 6.0)), [1: .stop])  // 2 results: keep 1, it is second
    XCTAssertEqual(asha.reached(result(2, 0, 4.0)), [2: .proceed])  // best of 3
    XCTAssertEqual(asha.reached(result(3, 0, 4.5)), [3: .stop])  // second of 4, keep 1
    XCTAssertEqual(asha.reached(result(4, 0, 4.2)), [4: .stop])  // second of 5, keep 1
    XCTAssertEqual(asha.reached(result(5, 0, 4.1)), [5: .proceed])  // second of 6, keep 2
    // Over many random sequences it never answers pause.
    var g = SystemRandomNumberGenerator()
    for _ in 0..<200 {
      let p = AsyncSuccessiveHalving()
      try p.start(SelectionSetup(models: 20, rungSteps: Array(repeating: [1, 3, 9], count: 20), reductionFactor: 3))
      for m in 0..<20 {
        for rung in 0..<3 {
          let d = p.reached(RungResult(model: m, rung: rung, step: 1, score: Double.random(in: 0...1, using: &g)))
          XCTAssertNotEqual(d[m], .pause)
          if d[m] == .stop { break }
        }
      }
    }
  }

  /// The median rule compares with the others' results at the rung so far.
  func testMedianStoppingRule() throws {
    let median = MedianStopping()
    try median.start(SelectionSetup(models: 5, rungSteps: Array(repeating: [2], count: 5), reductionFactor: 3))
    XCTAssertEqual(median.reached(result(0, 0, 3.0)), [0: .proceed])  // no others
    XCTAssertEqual(median.reached(result(1, 0, 4.0)), [1: .stop])  // median of [3] is 3
    XCTAssertEqual(median.reached(result(2, 0, 3.5)), [2: .proceed])  // median of [3, 4] is 3.5: not worse
    XCTAssertEqual(median.reached(result(3, 0, 3.6)), [3: .stop])  // median of [3, 3.5, 4] is 3.5
    XCTAssertEqual(median.reached(result(4, 0, 1.0)), [4: .proceed])
  }

  func testScoresMakeLowerBetterAndNaNWorst() {
    XCTAssertEqual(SelectionMetric.valLoss.score(loss: 2.5, accuracy: 0.3), 2.5)
    XCTAssertEqual(SelectionMetric.valAccuracy.score(loss: 2.5, accuracy: 0.3), -0.3)
    XCTAssertEqual(SelectionMetric.valLoss.score(loss: .nan, accuracy: 0.3), .infinity)
  }

  func testBuiltinsRefuseOptions() {
    for name in builtinSelectionNames {
      let p = makeBuiltinSelection(name)!
      XCTAssertThrowsError(
        try p.start(SelectionSetup(models: 1, rungSteps: [[1]], reductionFactor: 2, options: ["grace": .int(3)]))
      ) { XCTAssertEqual(($0 as? SelectionError)?.key, "grace") }
    }
  }

  /// `lrtf` with `horizon = "rung"` ranks by the time to each model's next rung; by default, to
  /// its end.
  func testLRTFHorizon() throws {
    var a = ReadyTask(
      task: ShardTask(model: 0, shard: 0, direction: .forward, step: 0), estimatedSeconds: 1, remainingSeconds: 100,
      shardCount: 1)
    a.secondsToNextRung = 5
    var b = ReadyTask(
      task: ShardTask(model: 1, shard: 0, direction: .forward, step: 0), estimatedSeconds: 1, remainingSeconds: 50,
      shardCount: 1)
    b.secondsToNextRung = 20
    let view = SchedulerView(now: 0, ready: [a, b], freeDevices: [0], deviceCount: 1, modelCount: 2)
    let toEnd = try makeBuiltinScheduler("lrtf", options: [:], seed: 0)
    let toRung = try makeBuiltinScheduler("lrtf", options: ["horizon": .string("rung")], seed: 0)
    XCTAssertEqual(toEnd.schedule(view).map(\.task.model), [0])
    XCTAssertEqual(toRung.schedule(view).map(\.task.model), [1])
    XCTAssertThrowsError(try makeBuiltinScheduler("lrtf", options: ["horizon": .string("soon")], seed: 0))
  }
}
