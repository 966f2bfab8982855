import Foundation
import HydraConfig
import HydraCore
import HydraRuntime

/// Text a user reads at the end of a run and from `validate`.
enum Report {
  /// Models ranked by validation loss (diverged ones last).
  static func ranking(_ runs: [ModelRun]) -> String {
    // Models stopped early by the selection policy rank after those that trained on: their losses
    // are of fewer steps.
    let ranked = runs.sorted { a, b in
      if a.status.isStopped != b.status.isStopped { return b.status.isStopped }
      let la = a.evaluations.last?.loss ?? .infinity, lb = b.evaluations.last?.loss ?? .infinity
      return la.isNaN ? false : (lb.isNaN ? true : la < lb)
    }
    var lines = ["rank  model  status       steps  train_loss  val_loss  val_acc  seconds"]
    for (i, r) in ranked.enumerated() {
      let e = r.evaluations.last
      let status: String
      if r.status.isStopped {
        status = "stopped" + (r.rungSteps.firstIndex(of: r.step).map { " r\($0)" } ?? "")
      } else if r.waiting {
        status = "waiting"
      } else {
        status = r.status.isFinished || r.step == 0 ? r.status.name : "paused"
      }
      lines.append(
        String(
          format: "%4d  %@  %-11@ %6d  %10.4f  %8.4f  %7.4f  %7.1f", i + 1, r.id, status, r.step,
          r.trainLosses.last ?? .nan, e?.loss ?? .nan, e?.accuracy ?? .nan, r.seconds))
    }
    return lines.joined(separator: "\n")
  }

  /// Every model's blocks with their costs, the shards chosen, each shard's footprint (state and
  /// working set: what `run` allocates for its tasks, to the byte) against the device budget, and
  /// what the host store will hold.
  static func validation(_ config: JobConfig, plans: [JobRunner.Plan], deviceBudget: Int, hostBudget: Int) -> String {
    let unset = " (not set: from this machine's memory)"
    var lines = [
      "job \(config.job.name): \(config.members.count) model(s), output \(config.job.output)",
      "device budget \(formatBytes(deviceBudget))\(config.cluster.deviceMemory == nil ? unset : ""), host store \(formatBytes(hostBudget))\(config.cluster.hostMemory == nil ? unset : ""), partitioner \(config.partitioner.name)",
    ]
    var storeTotal = 0
    for (m, plan) in zip(config.members, plans) {
      let overrides = m.overrides.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
      let r = plan.request
      lines.append(
        "\(m.id) \(overrides.isEmpty ? "(base)" : overrides), batch \(m.train.batchSize), activation checkpointing \(plan.policy.checkpointing ? "on" : "off"), double buffering \(r.doubleBuffering ? "on (a shard may use half the device)" : "off")"
      )
      for note in plan.notes { lines.append("  note: \(note)") }
      for i in 0..<plan.spec.blockCount {
        let c = r.blocks[i]
        let measured = r.blockSeconds.map { String(format: ", measured %.2f ms fwd+bwd", $0[i] * 1e3) } ?? ""
        lines.append(
          "  block \(r.blockNames[i].padding(toLength: 10, withPad: " ", startingAt: 0)) state \(formatBytes(c.stateBytes(stateCopies: r.stateCopies))), kept activations \(formatBytes(c.activationBytesPerSample.multipliedReportingOverflow(by: r.batchSize).overflow ? .max : c.activationBytesPerSample * r.batchSize)), \(String(format: "%.3f", Double(c.forwardFlopsPerSample) * Double(r.batchSize) / 1e9)) GFLOP forward\(measured)"
        )
      }
      for (s, range) in plan.shards.enumerated() {
        let state = r.stateBytes(range)
        storeTotal += state
        lines.append(
          "  shard \(s): blocks \(r.names(range)), footprint \(formatBytes(r.footprint(range))) of \(formatBytes(r.shardBudget)) (state \(formatBytes(state)), working set \(formatBytes(r.workingSet(range))))"
        )
      }
    }
    lines.append(
      "host store: \(formatBytes(storeTotal)) of shard state in all (RAM up to \(formatBytes(hostBudget)), the rest on disk), and what each model keeps between its tasks"
    )
    return lines.joined(separator: "\n")
  }
}
