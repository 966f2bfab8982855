import CBLAS
import Foundation
import HydraBackendSHM
import HydraCore
import HydraKernelsCPU
import HydraRuntime

/// `hydra-bench`: training-step speed of the cpu kernels, as a fraction of OpenBLAS's own sgemm rate
/// measured in the same run at the same thread count (MFU). Usage: hydra-bench [steps] [threads...];
/// `hydra-bench shards [steps]`: the cost of shards, spilling and double buffering.
@main
struct Bench {
  static func main() throws {
    BLASCore.restartWithBetterCoreIfNeeded()
    var args = CommandLine.arguments.dropFirst()
    if args.first == "shards" {
      args = args.dropFirst()
      try ShardBench.run(steps: args.first.flatMap(Int.init) ?? 10)
      return
    }
    let steps = args.first.flatMap(Int.init) ?? 10
    let threadCounts = args.count > 1 ? args.dropFirst().compactMap(Int.init) : [1, 2]
    print(
      "hydra-bench: median of \(steps) steps after 2 warm-up steps; MFU = model FLOP/s / sgemm FLOP/s (1024^3, same threads)"
    )
    for threads in threadCounts {
      let kernels = CPUKernels(threads: threads)
      let sgemm = sgemmRate(threads: threads)
      print(
        String(
          format: "threads %d: OpenBLAS (%@ kernels) sgemm 1024^3: %.1f GFLOP/s", threads, CPUKernels.blasCoreName,
          sgemm / 1e9))
      let gpt = ModelSpec.gpt(GPTShape(layers: 6, channels: 384, heads: 6, context: 128, vocab: 256))
      try report("gpt  L6 C384 H6 T128 B8 adamw", spec: gpt, batch: 8, kernels: kernels, steps: steps, sgemm: sgemm)
      let mlp = ModelSpec.mlp(inputs: 1024, hidden: [2048, 2048], classes: 10)
      try report(
        "mlp  1024-2048-2048-10 B256 adamw", spec: mlp, batch: 256, kernels: kernels, steps: steps, sgemm: sgemm)
    }
  }

  static func report(_ label: String, spec: ModelSpec, batch: Int, kernels: Kernels, steps: Int, sgemm: Double) throws {
    let data = SyntheticData(spec: spec)
    let optimizer = Optimizer(kind: .adamw, lr: 1e-4, totalSteps: steps + 2)
    let run = try ModelRun(
      index: 0, id: "bench", spec: spec, seed: 1,
      settings: TrainSettings(steps: steps + 2, batchSize: batch, optimizer: optimizer),
      data: data, shards: [0..<spec.blockCount], backend: SharedMemoryBackend(devices: 1), memory: kernels.memory)
    var times: [Double] = []
    while let task = run.nextTask {
      let start = DispatchTime.now().uptimeNanoseconds
      var completed = false
      var t = task
      while !completed {
        completed = try run.run(t, kernels: kernels)
        if !completed { t = run.nextTask! }
      }
      times.append(Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
    }
    let measured = Array(times.dropFirst(2)).sorted()
    let median = measured[measured.count / 2]
    let flops = modelFlopsPerStep(spec, batch: batch)
    let rate = flops / median
    print(
      String(
        format: "  %@: step %.4f s (min %.4f), %.2f GFLOP/step, %.1f GFLOP/s, MFU %.2f", label, median,
        measured[0], flops / 1e9, rate / 1e9, rate / sgemm))
  }

  /// Median FLOP/s of cblas_sgemm on 1024 x 1024 x 1024 at `threads` OpenBLAS threads (15 calls
  /// after 3 warm-up calls).
  static func sgemmRate(threads: Int) -> Double {
    openblas_set_num_threads(Int32(threads))
    let n = 1024
    var a = [Float](repeating: 0, count: n * n), b = a, c = a
    for i in 0..<(n * n) {
      a[i] = Float(i % 7) * 0.1
      b[i] = Float(i % 5) * 0.1
    }
    var times: [Double] = []
    for rep in 0..<18 {
      let start = DispatchTime.now().uptimeNanoseconds
      cblas_sgemm(
        CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(n), Int32(n), Int32(n), 1, a, Int32(n), b, Int32(n), 0, &c,
        Int32(n))
      // The first calls pay for page faults and OpenBLAS's buffers: not the rate.
      if rep >= 3 { times.append(Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9) }
    }
    times.sort()
    return 2 * Double(n * n * n) / times[times.count / 2]
  }
}

/// Random batches of the right kind for a spec.
final class SyntheticData: BatchSource {
  let spec: ModelSpec
  init(spec: ModelSpec) { self.spec = spec }
  func make(_ seed: UInt64, rows: Int) -> Batch {
    var rng = SplitMix64(seed: seed)
    switch spec {
    case .gpt(let s):
      let n = rows * s.context
      return Batch(
        rows: rows, tokens: (0..<n).map { _ in Int32(rng.nextInt(below: s.vocab)) },
        targets: (0..<n).map { _ in Int32(rng.nextInt(below: s.vocab)) })
    case .mlp(let inputs, _, let classes):
      return Batch(
        rows: rows, features: (0..<(rows * inputs)).map { _ in Float(rng.nextNormal()) },
        targets: (0..<rows).map { _ in Int32(rng.nextInt(below: classes)) })
    }
  }
  func trainBatch(step: Int, batchSize: Int, seed: UInt64, shuffle: Bool) -> Batch {
    make(derivedSeed(seed, UInt64(step)), rows: batchSize)
  }
  func validationBatches(batchSize: Int, limit: Int?) -> [Batch] { [make(3, rows: batchSize)] }
}
