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

  /// Per block, per timed repetition (`repetitions`, at least 1, after a warm-up of each copy): the seconds of
  /// its forward, of its backward, and of both.
  private static func time(
    _ spec: ModelSpec, batch: Int, repetitions: Int, kernels: Kernels, releaseEachTime: Bool = false,
    optimizer: Optimizer? = nil
  ) throws
    -> [(forward: [Double], backward: [Double], total: [Double])]
  {
    var rng = SplitMix64(seed: 0x9E0F1)
    let batchInput: Batch
    switch spec {
    case .gpt(let s):
      let n = batch * s.context
      batchInput = Batch(
        rows: batch, tokens: (0..<n).map { _ in Int32(rng.nextInt(below: s.vocab)) },
        targets: (0..<n).map { _ in Int32(rng.nextInt(below: s.vocab)) })
    case .mlp(let inputs, _, let classes):
      batchInput = Batch(
        rows: batch, features: (0..<(batch * inputs)).map { _ in Float(rng.nextNormal()) },
        targets: (0..<batch).map { _ in Int32(rng.nextInt(below: classes)) })
    }
    var seconds: [(forward: [Double], backward: [Double], total: [Double])] = []
    for i in 0..<spec.blockCount {
      func make() throws -> Block {
        let block = try spec.makeBlock(i, memory: kernels.memory)
        spec.initialize(block, seed: 1)
        try optimizer?.allocateState(block.parameters, memory: kernels.memory)
        return block
      }
      // In a job a task finds its model's state out of the caches (the tasks before it were other
      // models'): with `releaseEachTime`, the repetitions take turns over enough copies of the
      // block that their state (values, gradients, optimizer state) passes `coldBytes`.
      var copies = [try make()]
      if releaseEachTime {
        let bytes = spec.blockCosts(i).stateBytes(stateCopies: optimizer?.stateCopies ?? 0)
        let wanted = min(maxCopies, max(1, coldBytes / max(bytes, 1) + 1))
        while copies.count < wanted { copies.append(try make()) }
      }
      let input: Tensor? =
        i == 0 ? nil : try random(kernels, count: spec.outputBytesPerSample(i - 1) / 4 * batch, rng: &rng)
      var times: (forward: [Double], backward: [Double], total: [Double]) = ([], [], [])
      var dOutput: Tensor? = nil
      // One warm-up run of each copy, then the timed repetitions in turn.
      let warmUps = copies.count
      for r in 0..<(warmUps + max(repetitions, 1)) {
        let block = copies[r % copies.count]
        let start = DispatchTime.now().uptimeNanoseconds
        let y = try block.forward(BlockInput(activation: input, batch: batchInput), kernels: kernels)
        var forwardEnd = DispatchTime.now().uptimeNanoseconds
        if let loss = block as? LossBlock {
          // The loss belongs to the last shard's forward task.
          _ = try loss.loss(targets: batchInput.targets, kernels: kernels, keepGradient: true)
          forwardEnd = DispatchTime.now().uptimeNanoseconds
        } else if dOutput == nil {
          dOutput = try random(kernels, count: y.count, rng: &rng)
          forwardEnd = DispatchTime.now().uptimeNanoseconds
        }
        if optimizer != nil { for p in block.parameters { kernels.fill(p.grad.data, value: 0, count: p.count) } }
        _ = try block.backward(block is LossBlock ? nil : dOutput, kernels: kernels)
        try optimizer?.apply(to: block.parameters, step: r, kernels: kernels)
        if releaseEachTime { block.releaseBuffers() }
        let end = DispatchTime.now().uptimeNanoseconds
        if r >= warmUps {
          times.forward.append(Double(forwardEnd - start) / 1e9)
          times.backward.append(Double(end - forwardEnd) / 1e9)
          times.total.append(Double(end - start) / 1e9)
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
