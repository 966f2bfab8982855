import Foundation

public enum OptimizerKind: String, Sendable { case sgd, adamw }
public enum LRSchedule: String, Sendable { case constant, cosine }

/// An optimizer and its learning-rate schedule. State lives in each `Parameter` (so it moves with
/// its shard); this type holds only settings and is shared by every shard of a model.
public struct Optimizer: Sendable, Equatable {
  public var kind: OptimizerKind
  public var lr: Float
  public var weightDecay: Float
  public var momentum: Float
  public var beta1: Float
  public var beta2: Float
  public var eps: Float
  public var schedule: LRSchedule
  public var warmupSteps: Int
  public var totalSteps: Int

  public init(
    kind: OptimizerKind, lr: Float, weightDecay: Float = 0, momentum: Float = 0.9,
    beta1: Float = 0.9, beta2: Float = 0.999, eps: Float = 1e-8,
    schedule: LRSchedule = .constant, warmupSteps: Int = 0, totalSteps: Int
  ) {
    self.kind = kind
    self.lr = lr
    self.weightDecay = weightDecay
    self.momentum = momentum
    self.beta1 = beta1
    self.beta2 = beta2
    self.eps = eps
    self.schedule = schedule
    self.warmupSteps = warmupSteps
    self.totalSteps = totalSteps
  }

  /// Tensors of state per parameter tensor.
  public var stateCopies: Int { kind == .sgd ? 1 : 2 }

  /// The rate of update `step` (0-based): linear warmup lr * (step + 1) / warmup for the first
  /// `warmupSteps` updates, then constant, or cosine from lr towards 0 over the remaining updates
  /// (lr * 0.5 * (1 + cos(pi * (step - warmup) / (total - warmup))), never reaching 0).
  public func learningRate(step: Int) -> Float {
    if step < warmupSteps { return lr * Float(step + 1) / Float(warmupSteps) }
    switch schedule {
    case .constant: return lr
    case .cosine:
      let span = max(1, totalSteps - warmupSteps)
      let progress = Double(step - warmupSteps) / Double(span)
      return Float(Double(lr) * 0.5 * (1 + cos(Double.pi * min(progress, 1))))
    }
  }

  /// Gives every owned parameter its state tensors (zero), charged to `memory`.
  public func allocateState(_ parameters: [Parameter], memory: DeviceMemory?) throws {
    for p in parameters where p.replicaOf == nil && p.state.count != stateCopies {
      p.state = try (0..<stateCopies).map { _ in try Tensor(shape: p.shape, memory: memory) }
    }
  }

  /// Applies update `step` (0-based) to every owned parameter, in the order given, from its
  /// accumulated gradient; replicas are skipped (their owner steps).
  public func apply(to parameters: [Parameter], step: Int, kernels: Kernels) throws {
    let rate = learningRate(step: step)
    for p in parameters where p.replicaOf == nil {
      if p.state.count != stateCopies { try allocateState([p], memory: kernels.memory) }
      let decay = p.decays ? weightDecay : 0
      switch kind {
      case .sgd:
        kernels.sgdStep(
          param: p.value.data, grad: p.grad.data, momentumBuffer: p.state[0].data, count: p.count,
          lr: rate, momentum: momentum, weightDecay: decay, step: step + 1)
      case .adamw:
        kernels.adamwStep(
          param: p.value.data, grad: p.grad.data, m: p.state[0].data, v: p.state[1].data,
          count: p.count, lr: rate, beta1: beta1, beta2: beta2, eps: eps, weightDecay: decay,
          step: step + 1)
      }
    }
  }
}
