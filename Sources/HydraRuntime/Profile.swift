import Foundation
import HydraCore

/// A short measured profile of a model's blocks: the seconds of one forward + backward of each,
/// at the model's batch size, on the job's kernels. The `balanced` partitioner then balances
/// measured times instead of FLOP counts (`[partitioner] profile_steps = N`, the runtime's own
/// option: N timed repetitions per block after one warm-up, the median kept).
///
/// Each block is built alone on an unlimited scratch device, fed random inputs, and freed before
/// the next: the profile needs one block's memory at a time and touches no model's state.
public enum BlockProfile {
  public static func measure(_ spec: ModelSpec, batch: Int, repetitions: Int, kernels: Kernels) throws -> [Double] {
    try time(spec, batch: batch, repetitions: repetitions, kernels: kernels).map { median($0.total) }
  }

  /// Per block: the mean seconds of its forward and of its backward apart (what `hydra-mpi plan
  /// --measure` simulates with: a makespan adds task times, so their mean is what it adds up, and a
  /// slow repetition is as likely in the job). The block lets go of its buffers after each
  /// repetition, as a shard does after each task, so that each forward allocates them again as in
  /// the job. With an `optimizer`, the backward also does what a backward task does for the
  /// block's parameters: zeroes their gradients and applies the optimizer's update.
  public static func measureDirections(
    _ spec: ModelSpec, batch: Int, repetitions: Int, kernels: Kernels, optimizer: Optimizer? = nil
  ) throws -> (forward: [Double], backward: [Double]) {
    let times = try time(
      spec, batch: batch, repetitions: repetitions, kernels: kernels, releaseEachTime: true, optimizer: optimizer)
    return (times.map { mean($0.forward) }, times.map { mean($0.backward) })
  }

  /// The state a profile's repetitions take turns over, at least (twice a large L3 cache), and the
  /// most copies of a block that takes.
  static let coldBytes = 64 << 20
  static let maxCopies = 16

  private static func median(_ xs: [Double]) -> Double { xs.sorted()[xs.count / 2] }
  private static func mean(_ xs: [Double]) -> Double { xs.reduce(0, +) / Double(max(xs.count, 1)) }

  /// Per block: the mean seconds of its forward and of its backward as the first step of a job
  /// runs them, `repetitions` times (at least 1): each on a new copy of the block (its gradients
  /// and optimizer state allocated but not touched yet, as a job leaves them before its first
  /// step), after the buffers kept for reuse are let go (`MappedBuffers.trim`), so that every
  /// buffer the task takes is mapped afresh and faulted in page by page. This is an upper bound:
  /// a model whose first step follows another's may reuse that model's freed buffers.
  public static func measureFirstRuns(
    _ spec: ModelSpec, batch: Int, repetitions: Int, kernels: Kernels, optimizer: Optimizer? = nil
  ) throws -> (forward: [Double], backward: [Double]) {
    var rng = SplitMix64(seed: 0x9E0F1)
    let batchInput = inputBatch(spec, batch: batch, rng: &rng)
    var forward: [Double] = [], backward: [Double] = []
    for i in 0..<spec.blockCount {
      let input = try blockInput(spec, i, batch: batch, kernels: kernels, rng: &rng)
      var dOutput: Tensor? = nil
      var f = 0.0, b = 0.0
      let n = max(repetitions, 1)
      for r in 0..<n {
        MappedBuffers.shared.trim()
        let block = try newBlock(spec, i, kernels: kernels, optimizer: optimizer)
        let t = try run(
          block, input: input, batch: batchInput, dOutput: &dOutput, rng: &rng, step: r, kernels: kernels,
          optimizer: optimizer, release: true)
        f += t.forward
        b += t.backward
      }
      forward.append(f / Double(n))
      backward.append(b / Double(n))
    }
    return (forward, backward)
  }

  /// Block `i` of `spec` built on `kernels`' memory, initialised, with its optimizer state
  /// allocated (not touched yet, as a job's model before its first step).
  private static func newBlock(_ spec: ModelSpec, _ i: Int, kernels: Kernels, optimizer: Optimizer?) throws -> Block {
    let block = try spec.makeBlock(i, memory: kernels.memory)
    spec.initialize(block, seed: 1)
    try optimizer?.allocateState(block.parameters, memory: kernels.memory)
    return block
  }

  /// A random input for block `i` at `batch` rows (the batch itself feeds block 0: nil).
  private static func blockInput(
    _ spec: ModelSpec, _ i: Int, batch: Int, kernels: Kernels, rng: inout SplitMix64
  ) throws -> Tensor? {
    i == 0 ? nil : try random(kernels, count: spec.outputBytesPerSample(i - 1) / 4 * batch, rng: &rng)
  }

  /// Random tokens and targets (GPT) or features and classes (MLP) for one batch.
  private static func inputBatch(_ spec: ModelSpec, batch: Int, rng: inout SplitMix64) -> Batch {
    switch spec {
    case .gpt(let s):
      let n = batch * s.context
      return Batch(
        rows: batch, tokens: (0..<n).map { _ in Int32(rng.nextInt(below: s.vocab)) },
        targets: (0..<n).map { _ in Int32(rng.nextInt(below: s.vocab)) })
    case .mlp(let inputs, _, let classes):
      return Batch(
        rows: batch, features: (0..<(batch * inputs)).map { _ in Float(rng.nextNormal()) },
        targets: (0..<batch).map { _ in Int32(rng.nextInt(below: classes)) })
    }
  }

  /// One forward and backward of `block` as a task runs them, timed apart: the loss belongs to the
  /// forward (the last shard's forward task computes it); with an `optimizer`, the backward zeroes
  /// the gradients first and applies the update after. `dOutput`, the gradient fed to a block that
  /// is not the loss, is drawn the first time (outside the timing).
  private static func run(
    _ block: Block, input: Tensor?, batch: Batch, dOutput: inout Tensor?, rng: inout SplitMix64, step: Int,
    kernels: Kernels, optimizer: Optimizer?, release: Bool
  ) throws -> (forward: Double, backward: Double) {
    let start = DispatchTime.now().uptimeNanoseconds
    let y = try block.forward(BlockInput(activation: input, batch: batch), kernels: kernels)
    var forwardEnd = DispatchTime.now().uptimeNanoseconds
    if let loss = block as? LossBlock {
      _ = try loss.loss(targets: batch.targets, kernels: kernels, keepGradient: true)
      forwardEnd = DispatchTime.now().uptimeNanoseconds
    } else if dOutput == nil {
      dOutput = try random(kernels, count: y.count, rng: &rng)
      forwardEnd = DispatchTime.now().uptimeNanoseconds
    }
    if optimizer != nil { for p in block.parameters { kernels.fill(p.grad.data, value: 0, count: p.count) } }
    _ = try block.backward(block is LossBlock ? nil : dOutput, kernels: kernels)
    try optimizer?.apply(to: block.parameters, step: step, kernels: kernels)
    if release { block.releaseBuffers() }
    let end = DispatchTime.now().uptimeNanoseconds
    return (Double(forwardEnd - start) / 1e9, Double(end - forwardEnd) / 1e9)
  }

  /// Per block, per timed repetition (`repetitions`, at least 1, after a warm-up of each copy): the seconds of
  /// its forward, of its backward, and of both.
  private static func time(
    _ spec: ModelSpec, batch: Int, repetitions: Int, kernels: Kernels, releaseEachTime: Bool = false,
    optimizer: Optimizer? = nil
  ) throws
    -> [(forward: [Double], backward: [Double], total: [Double])]
  {
    var rng = SplitMix64(seed: 0x9E0F1)
    let batchInput = inputBatch(spec, batch: batch, rng: &rng)
    var seconds: [(forward: [Double], backward: [Double], total: [Double])] = []
    for i in 0..<spec.blockCount {
      func make() throws -> Block { try newBlock(spec, i, kernels: kernels, optimizer: optimizer) }
      // In a job a task finds its model's state out of the caches (the tasks before it were other
      // models'): with `releaseEachTime`, the repetitions take turns over enough copies of the
      // block that their state (values, gradients, optimizer state) passes `coldBytes`.
      var copies = [try make()]
      if releaseEachTime {
        let bytes = spec.blockCosts(i).stateBytes(stateCopies: optimizer?.stateCopies ?? 0)
        let wanted = min(maxCopies, max(1, coldBytes / max(bytes, 1) + 1))
        while copies.count < wanted { copies.append(try make()) }
      }
      let input = try blockInput(spec, i, batch: batch, kernels: kernels, rng: &rng)
      var times: (forward: [Double], backward: [Double], total: [Double]) = ([], [], [])
      var dOutput: Tensor? = nil
      // One warm-up run of each copy, then the timed repetitions in turn.
      let warmUps = copies.count
      for r in 0..<(warmUps + max(repetitions, 1)) {
        let t = try run(
          copies[r % copies.count], input: input, batch: batchInput, dOutput: &dOutput, rng: &rng, step: r,
          kernels: kernels, optimizer: optimizer, release: releaseEachTime)
        if r >= warmUps {
          times.forward.append(t.forward)
          times.backward.append(t.backward)
          times.total.append(t.forward + t.backward)
        }
      }
      for block in copies { block.releaseBuffers() }
      seconds.append(times)
    }
    return seconds
  }

  private static func random(_ kernels: Kernels, count: Int, rng: inout SplitMix64) throws -> Tensor {
    // Drawn on the host, copied to the device by its plugin.
    let values = (0..<count).map { _ in Float(rng.nextNormal()) }
    return try Tensor(shape: [count], values: values, memory: kernels.memory)
  }
}
