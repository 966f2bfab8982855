import Foundation
import HydraBackendSHM
import HydraCore
import HydraKernelsCPU
import HydraPartitioners
import HydraRuntime

/// The shards benchmark: one GPT step all-resident, then cut into shards under a device budget with
/// its state in the host store's RAM, then with the store on disk; with and without prefetching the
/// next shard (double buffering).
enum ShardBench {
  static func run(steps: Int) throws {
    let shape = GPTShape(layers: 6, channels: 384, heads: 6, context: 128, vocab: 256)
    let spec = ModelSpec.gpt(shape)
    let batch = 8
    print("shards: gpt L6 C384 H6 T128 B8 adamw, threads 1, median of \(steps) steps after 2 warm-up steps")
    var baseline = 0.0
    // (label, device budget, host store RAM, double buffering, activation checkpointing)
    let modes: [(String, Int, Int, Bool, Bool)] = [
      ("all resident, one shard", .max, .max, true, false),
      ("sharded, RAM store, double buffering", 480 << 20, .max, true, false),
      ("sharded, RAM store, no double buffering", 480 << 20, .max, false, false),
      ("sharded, disk store, double buffering", 480 << 20, 1, true, false),
      ("sharded, disk store, no double buffering", 480 << 20, 1, false, false),
      ("smaller budget, recomputed, RAM store", 256 << 20, .max, true, true),
      ("smaller budget, recomputed, disk store", 256 << 20, 1, true, true),
    ]
    for (label, budget, host, doubleBuffering, checkpointing) in modes {
      let memory = DeviceMemory(budget: budget, label: "device 0")
      let kernels = CPUKernels(threads: 1, memory: DeviceMemory(workingSetOf: memory))
      let folder = FileManager.default.temporaryDirectory.appendingPathComponent("hydra-bench-\(getpid())").path
      let store = HostStore(budget: host, folder: folder)
      store.attach(device: 0, memory: memory)
      // Double buffering's room is left in every mode, so that modes of one budget get the same
      // shards and differ only in whether the next one is prefetched.
      let request = spec.partitionRequest(
        batch: batch, stateCopies: 2, budget: budget, doubleBuffering: true, activationCheckpointing: checkpointing)
      let shards = try BalancedPartitioner().partition(request)
      let steps = steps + 2
      let run = try ModelRun(
        index: 0, id: "bench", spec: spec, seed: 1,
        settings: TrainSettings(
          steps: steps, batchSize: batch, optimizer: Optimizer(kind: .adamw, lr: 1e-4, totalSteps: steps)),
        data: SyntheticData(spec: spec), shards: shards, backend: SharedMemoryBackend(devices: 1), store: store,
        policy: ActivationPolicy(checkpointing: checkpointing, releaseBuffers: true, prefetch: doubleBuffering),
        footprints: shards.map { request.footprint($0) }, workingSets: shards.map { request.workingSet($0) })
      var times: [Double] = []
      var start = DispatchTime.now().uptimeNanoseconds
      while let task = run.nextTask {
        if try run.run(task, kernels: kernels) {
          let end = DispatchTime.now().uptimeNanoseconds
          times.append(Double(end - start) / 1e9)
          start = end
        }
      }
      store.drain()
      let measured = Array(times.dropFirst(2)).sorted()
      let median = measured[measured.count / 2]
      if baseline == 0 { baseline = median }
      print(
        String(
          format: "  %@ %d shard(s)%@: step %.3f s (x%.3f), device peak %@ of %@, disk %@ written / %@ read",
          label.padding(toLength: 42, withPad: " ", startingAt: 0), shards.count, checkpointing ? " recomputed" : "",
          median, median / baseline,
          formatBytes(memory.peak), formatBytes(budget), formatBytes(store.bytesWritten), formatBytes(store.bytesRead)))
      store.removeSpillFiles()
    }
  }
}
