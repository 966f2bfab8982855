import Foundation

/// What a selection policy ranks models by: a validation metric, made "lower is better".
public enum SelectionMetric: String, Sendable, CaseIterable {
  case valLoss = "val_loss"
  case valAccuracy = "val_accuracy"

  /// The score a policy compares: the loss itself, or the accuracy negated. A value that is not a
  /// number (a model whose loss blew up) scores worst of all.
  public func score(loss: Double, accuracy: Double) -> Double {
    let value = self == .valLoss ? loss : -accuracy
    return value.isNaN ? .infinity : value
  }
}

/// The steps at which a model's results are compared: `minSteps · eta^k` for k = 0, 1, ..., each
/// below the model's `train.steps` (the model trains to the end after the last one).
public struct Rungs: Sendable, Equatable {
  public let minSteps: Int
  public let reductionFactor: Int
  public init(minSteps: Int, reductionFactor: Int) {
    precondition(minSteps >= 1 && reductionFactor >= 2, "min_steps >= 1, reduction_factor >= 2")
    self.minSteps = minSteps
    self.reductionFactor = reductionFactor
  }

  /// The rung steps of a model that trains `steps` steps, in order (none when `minSteps >= steps`).
  public func steps(below steps: Int) -> [Int] {
    var out: [Int] = []
    var s = minSteps
    while s < steps {
      out.append(s)
      let (next, overflow) = s.multipliedReportingOverflow(by: reductionFactor)
      if overflow { break }
      s = next
    }
    return out
  }
}

/// One model's result at one rung: `score` is lower for better models (`SelectionMetric.score`).
public struct RungResult: Sendable, Equatable {
  public var model: Int
  /// The rung's index (0 = the first, at `min_steps`) and the step it is at.
  public var rung: Int
  public var step: Int
  public var score: Double
  public init(model: Int, rung: Int, step: Int, score: Double) {
    self.model = model
    self.rung = rung
    self.step = step
    self.score = score
  }
}

/// What becomes of a model at a rung.
public enum SelectionDecision: String, Sendable, Equatable {
  /// Train on to the next rung (or to the end).
  case proceed
  /// Wait at this rung, state in the host store, until the policy decides.
  case pause
  /// Train no further: the model's result is its last checkpoint.
  case stop
}

/// What a selection policy is told when the job starts.
public struct SelectionSetup: Sendable {
  /// Models of the job; their indices are those of `RungResult.model`.
  public var models: Int
  /// Per model, its rung steps (a model with fewer steps may have fewer rungs).
  public var rungSteps: [[Int]]
  /// `eta`: keep the best 1/eta at each rung.
  public var reductionFactor: Int
  /// The `[selection]` table without `name`, `metric`, `min_steps` and `reduction_factor`.
  public var options: [String: ConfigValue]
  public init(models: Int, rungSteps: [[Int]], reductionFactor: Int, options: [String: ConfigValue] = [:]) {
    self.models = models
    self.rungSteps = rungSteps
    self.reductionFactor = reductionFactor
    self.options = options
  }
}

/// Early stopping for model selection: which models go on, wait or stop at each rung.
///
/// The runtime evaluates every model at each of its rungs and tells the policy (`reached`); it
/// tells it too when a model ends without reaching its next rung (`ended`: it finished, or its
/// loss diverged). Each call answers with decisions for any models: the one that reached the rung
/// (no decision for it means `proceed`) and models the policy paused earlier, which it may let go on
/// or stop now. A policy sees the results and nothing it could use to change a model's numbers: a
/// model that goes on trains exactly as it would without selection.
///
/// Calls come from one thread at a time, in the order the results arrived; under `mpi` on rank 0
/// only. A policy that leaves a model paused with nothing else left to run is an error.
public protocol Selection: AnyObject {
  var name: String { get }
  /// Whether which models stop may depend on the order results arrive in (timing), as with `asha`;
  /// `summary.json` says so.
  var dependsOnTiming: Bool { get }
  func start(_ setup: SelectionSetup) throws
  func reached(_ result: RungResult) -> [Int: SelectionDecision]
  func ended(model: Int) -> [Int: SelectionDecision]
}

/// Bad `[selection]` options (the runtime adds the file and line of `key`).
public struct SelectionError: Error, CustomStringConvertible, Sendable {
  public var key: String
  public var message: String
  public init(key: String, _ message: String) {
    self.key = key
    self.message = message
  }
  public var description: String { message }
}
