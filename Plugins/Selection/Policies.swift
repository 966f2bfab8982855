import HydraPluginAPI

/// The built-in selection policies, by the names `[selection] name` uses.
public let builtinSelectionNames = ["none", "sha", "asha", "median"]

public func makeBuiltinSelection(_ name: String) -> Selection? {
  switch name {
  case "none": return NoSelection()
  case "sha": return SuccessiveHalving()
  case "asha": return AsyncSuccessiveHalving()
  case "median": return MedianStopping()
  default: return nil
  }
}

/// Built-ins take no options beyond the `[selection]` keys the runtime reads.
private func refuseOptions(_ setup: SelectionSetup, _ name: String) throws {
  if let key = setup.options.keys.sorted().first {
    throw SelectionError(key: key, "selection.\(key): \"\(name)\" has no option \"\(key)\"")
  }
}

/// Every model trains to the end.
public final class NoSelection: Selection {
  public let name = "none"
  public let dependsOnTiming = false
  public init() {}
  public func start(_ setup: SelectionSetup) throws { try refuseOptions(setup, name) }
  public func reached(_ result: RungResult) -> [Int: SelectionDecision] { [:] }
  public func ended(model: Int) -> [Int: SelectionDecision] { [:] }
}

/// How many of `count` results go on at a rung: the best 1/eta, at least one.
func kept(_ count: Int, eta: Int) -> Int { max(1, count / eta) }

/// Synchronous successive halving: at each rung every model still in the race waits until all
/// the others have reached it (or ended), then the best 1/eta go on and the rest stop. Which models
/// stop depends on the job alone (ties go to the lower model index).
public final class SuccessiveHalving: Selection {
  public let name = "sha"
  public let dependsOnTiming = false
  private var setup = SelectionSetup(models: 0, rungSteps: [], reductionFactor: 2)
  /// Per rung: the models expected there (those that went on from the rung before), their
  /// results so far, and whether the rung has been decided.
  private var expected: [Set<Int>] = []
  private var results: [[Int: Double]] = []
  private var decided: [Bool] = []

  public init() {}

  public func start(_ setup: SelectionSetup) throws {
    try refuseOptions(setup, name)
    self.setup = setup
    let rungs = setup.rungSteps.map(\.count).max() ?? 0
    expected = Array(repeating: [], count: rungs)
    results = Array(repeating: [:], count: rungs)
    decided = Array(repeating: false, count: rungs)
    if rungs > 0 { expected[0] = Set((0..<setup.models).filter { !setup.rungSteps[$0].isEmpty }) }
  }

  public func reached(_ result: RungResult) -> [Int: SelectionDecision] {
    guard result.rung >= 0 && result.rung < results.count else { return [:] }
    results[result.rung][result.model] = result.score
    var decisions: [Int: SelectionDecision] = [result.model: .pause]
    settle(&decisions)
    return decisions
  }

  public func ended(model: Int) -> [Int: SelectionDecision] {
    for r in expected.indices where !decided[r] { expected[r].remove(model) }
    var decisions: [Int: SelectionDecision] = [:]
    settle(&decisions)
    return decisions
  }

  /// Decides every rung, in order, whose expected models have all reported or ended.
  private func settle(_ decisions: inout [Int: SelectionDecision]) {
    for r in expected.indices where !decided[r] {
      guard expected[r].isSubset(of: results[r].keys) else { return }
      decided[r] = true
      let ranked = results[r].sorted { $0.value < $1.value || ($0.value == $1.value && $0.key < $1.key) }
      let keep = kept(ranked.count, eta: setup.reductionFactor)
      for (i, (model, _)) in ranked.enumerated() {
        decisions[model] = i < keep ? .proceed : .stop
        if i < keep && r + 1 < expected.count && setup.rungSteps[model].count > r + 1 {
          expected[r + 1].insert(model)
        }
      }
    }
  }
}

/// Asynchronous successive halving: a model that reaches a rung goes on at once if it is in the
/// best 1/eta of the results that rung has seen so far (the first always is), and stops otherwise.
/// No model ever waits, so no device waits for a rung to fill; which models stop depends on the
/// order they reach each rung.
public final class AsyncSuccessiveHalving: Selection {
  public let name = "asha"
  public let dependsOnTiming = true
  private var eta = 2
  private var results: [Int: [Double]] = [:]
  public init() {}
  public func start(_ setup: SelectionSetup) throws {
    try refuseOptions(setup, name)
    eta = setup.reductionFactor
  }
  public func reached(_ result: RungResult) -> [Int: SelectionDecision] {
    results[result.rung, default: []].append(result.score)
    let all = results[result.rung]!
    let better = all.filter { $0 < result.score }.count
    return [result.model: better < kept(all.count, eta: eta) ? .proceed : .stop]
  }
  public func ended(model: Int) -> [Int: SelectionDecision] { [:] }
}

/// The median stopping rule: a model whose result at a rung is worse than the median of the other
/// models' results at that rung so far stops; the first to arrive always goes on.
public final class MedianStopping: Selection {
  public let name = "median"
  public let dependsOnTiming = true
  private var results: [Int: [Double]] = [:]
  public init() {}
  public func start(_ setup: SelectionSetup) throws { try refuseOptions(setup, name) }
  public func reached(_ result: RungResult) -> [Int: SelectionDecision] {
    let others = results[result.rung, default: []].sorted()
    results[result.rung, default: []].append(result.score)
    guard !others.isEmpty else { return [result.model: .proceed] }
    let n = others.count
    let median = n % 2 == 1 ? others[n / 2] : (others[n / 2 - 1] + others[n / 2]) / 2
    return [result.model: result.score > median ? .stop : .proceed]
  }
  public func ended(model: Int) -> [Int: SelectionDecision] { [:] }
}
