import Foundation
import HydraConfig
import HydraCore
import HydraRuntime

/// Text a user reads at the end of a run and from `validate`.
enum Report {
  /// Models ranked by validation loss (diverged ones last).
  static func ranking(_ runs: [ModelRun]) -> String {
    let ranked = runs.sorted { a, b in
      let la = a.evaluations.last?.loss ?? .infinity, lb = b.evaluations.last?.loss ?? .infinity
      return la.isNaN ? false : (lb.isNaN ? true : la < lb)
    }
    var lines = ["rank  model  status     steps  train_loss  val_loss  val_acc  seconds"]
    for (i, r) in ranked.enumerated() {
      let e = r.evaluations.last
      lines.append(
        String(
          format: "%4d  %@  %-9@ %6d  %10.4f  %8.4f  %7.4f  %7.1f", i + 1, r.id, r.status.name, r.step,
          r.trainLosses.last ?? .nan, e?.loss ?? .nan, e?.accuracy ?? .nan, r.seconds))
    }
    return lines.joined(separator: "\n")
  }

  static func validation(_ config: JobConfig, specs: [ModelSpec]) throws -> String {
    var lines = ["job \(config.job.name): \(config.members.count) model(s), output \(config.job.output)"]
    for (m, spec) in zip(config.members, specs) {
      let overrides = m.overrides.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
      lines.append("\(m.id) \(overrides.isEmpty ? "(base)" : overrides) seed \(m.seed)")
      let memory = DeviceMemory()
      var total = 0
      for i in 0..<spec.blockCount {
        let block = try spec.makeBlock(i, memory: memory)
        let c = block.costs
        let act = c.activationBytesPerSample * m.train.batchSize
        total += c.parameterBytes
        lines.append(
          "  block \(block.name.padding(toLength: 10, withPad: " ", startingAt: 0)) params \(formatBytes(c.parameterBytes)), activations \(formatBytes(act)) at batch \(m.train.batchSize), \(String(format: "%.3f", Double(c.forwardFlopsPerSample * m.train.batchSize) / 1e9)) GFLOP forward")
      }
      lines.append("  one shard, parameters \(formatBytes(total))")
    }
    return lines.joined(separator: "\n")
  }
}
