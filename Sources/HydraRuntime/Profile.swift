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
    var seconds: [Double] = []
    for i in 0..<spec.blockCount {
      let block = try spec.makeBlock(i, memory: kernels.memory)
      spec.initialize(block, seed: 1)
      let input: Tensor? =
        i == 0 ? nil : try random(kernels, count: spec.outputBytesPerSample(i - 1) / 4 * batch, rng: &rng)
      var times: [Double] = []
      var dOutput: Tensor? = nil
      for r in 0...repetitions {
        let start = DispatchTime.now().uptimeNanoseconds
        let y = try block.forward(BlockInput(activation: input, batch: batchInput), kernels: kernels)
        if let loss = block as? LossBlock {
          _ = try loss.loss(targets: batchInput.targets, kernels: kernels, keepGradient: true)
          _ = try block.backward(nil, kernels: kernels)
        } else {
          if dOutput == nil { dOutput = try random(kernels, count: y.count, rng: &rng) }
          _ = try block.backward(dOutput, kernels: kernels)
        }
        if r > 0 { times.append(Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9) }
      }
      block.releaseBuffers()
      times.sort()
      seconds.append(times[times.count / 2])
    }
    return seconds
  }

  private static func random(_ kernels: Kernels, count: Int, rng: inout SplitMix64) throws -> Tensor {
    // Drawn on the host, copied to the device by its plugin.
    let values = (0..<count).map { _ in Float(rng.nextNormal()) }
    return try Tensor(shape: [count], values: values, memory: kernels.memory)
  }
}
