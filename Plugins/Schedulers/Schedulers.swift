import HydraPluginAPI

/// Hydra's Sharded-LRTF: the ready task of the model with the longest estimated remaining time goes
/// first (ties: the lower model index), each to a free device, preferring the device that already
/// holds the shard's state, then the one holding its input, then the lowest index. Keeping the
/// longest model moving shortens the tail where too few models are left to fill the devices.
///
/// With `prefer_resident` (the default), tasks whose shard state is in memory (a device or the
/// host store's RAM) go before those whose state was spilled to disk; Sharded-LRTF orders each
/// group. Where nothing is on disk this is Hydra's policy unchanged; where the store spills, it
/// trains what is at hand while the rest waits, instead of reading back the state least recently
/// used, which a store that cycles through more models than it holds has just written out
/// (`Examples/gpt2-sweep/README.md` has the figures). `prefer_resident = false`: Hydra's policy
/// always.
public final class LRTFScheduler: Scheduler {
  public let name = "lrtf"
  public let preferResident: Bool
  /// Rank by the time left to each model's next rung (`horizon = "rung"`: the next point where the
  /// selection policy may stop it or hold it) rather than to its end.
  public let toNextRung: Bool
  public init(preferResident: Bool = true, toNextRung: Bool = false) {
    self.preferResident = preferResident
    self.toNextRung = toNextRung
  }

  public func schedule(_ view: SchedulerView) -> [Assignment] {
    let order: ReadyOrder =
      toNextRung ? .longestToNextRung(residentFirst: preferResident) : .longestRemaining(residentFirst: preferResident)
    return assignInOrder(order, view)
  }
}

/// First come, first served: ready tasks by the time they became ready (ties: the lower model
/// index), devices chosen as `lrtf` does.
public final class FIFOScheduler: Scheduler {
  public let name = "fifo"
  public init() {}

  public func schedule(_ view: SchedulerView) -> [Assignment] { assignInOrder(.earliestReady, view) }
}

/// Takes models in turn: after model m got a device, the next pick is the first ready model from
/// m + 1 on, wrapping around. Devices chosen as `lrtf` does.
public final class RoundRobinScheduler: Scheduler {
  public let name = "round-robin"
  /// The model index the next pick starts from.
  public private(set) var next = 0
  public init() {}

  public func schedule(_ view: SchedulerView) -> [Assignment] {
    guard let index = view.readyIndex else { return scheduleList(view) }
    var free = view.freeDevices.sorted()
    var out: [Assignment] = []
    guard index.count > 0 else { return out }
    let n = max(view.modelCount, index.model(atRank: index.count - 1) + 1, 1)
    // Models taken in this decision (given a device, or bound to a busy one): each pick starts just
    // past the previous one, so the walk meets them only after every other ready model.
    var taken = Set<Int>()
    while taken.count < index.count, !free.isEmpty {
      let start = (next % n + n) % n
      var m = index.firstModel(atOrAfter: start) ?? index.model(atRank: 0)
      while taken.contains(m) { m = index.firstModel(atOrAfter: m + 1) ?? index.model(atRank: 0) }
      taken.insert(m)
      let t = index[model: m]!
      guard let d = preferredDevice(for: t, among: free) else { continue }
      free.removeAll { $0 == d }
      out.append(Assignment(task: t.task, device: d))
      next = (m + 1) % n
    }
    return out
  }

  /// The same decision from a list that names a model twice (a view written by hand).
  private func scheduleList(_ view: SchedulerView) -> [Assignment] {
    var ready = view.ready
    var free = view.freeDevices.sorted()
    var out: [Assignment] = []
    let n = max(view.modelCount, (ready.map(\.task.model).max() ?? -1) + 1, 1)
    while !ready.isEmpty, !free.isEmpty {
      let start = next
      let distance = { (t: ReadyTask) in ((t.task.model - start) % n + n) % n }
      let i = ready.indices.min { distance(ready[$0]) < distance(ready[$1]) }!
      let t = ready.remove(at: i)
      // A task bound to a busy device (a backward under `mpi`) waits for it.
      guard let d = preferredDevice(for: t, among: free) else { continue }
      free.removeAll { $0 == d }
      out.append(Assignment(task: t.task, device: d))
      next = (t.task.model + 1) % n
    }
    return out
  }
}

/// For each free device in index order, a uniformly random ready task, drawn with SplitMix64:
/// the same seed and the same sequence of views give the same choices (the ready tasks are taken in
/// model order, whatever order the view lists them in).
public final class RandomScheduler: Scheduler {
  public let name = "random"
  private var rng: SplitMix64
  public init(seed: UInt64) { rng = SplitMix64(seed: seed) }

  public func schedule(_ view: SchedulerView) -> [Assignment] {
    // Any task may run on any device: the k-th unpicked ready model, by rank in the index.
    guard let index = view.readyIndex, index.constrainedCount == 0 else { return scheduleList(view) }
    var picked: [Int] = []  // ranks taken in this decision, ascending
    var out: [Assignment] = []
    for d in view.freeDevices.sorted() where picked.count < index.count {
      var rank = rng.nextInt(below: index.count - picked.count)
      for p in picked {
        guard p <= rank else { break }
        rank += 1
      }
      picked.insert(rank, at: picked.firstIndex { $0 > rank } ?? picked.count)
      out.append(Assignment(task: index[model: index.model(atRank: rank)]!.task, device: d))
    }
    return out
  }

  /// The same decision from the whole list, for tasks bound to some devices (under `mpi`).
  private func scheduleList(_ view: SchedulerView) -> [Assignment] {
    var ready = view.ready.sorted { $0.task.model < $1.task.model }
    var out: [Assignment] = []
    for d in view.freeDevices.sorted() where !ready.isEmpty {
      // Only the tasks that may run on `d` (all of them, except under `mpi`).
      let candidates = ready.indices.filter { ready[$0].allowedDevices?.contains(d) ?? true }
      guard !candidates.isEmpty else { continue }
      let t = ready.remove(at: candidates[rng.nextInt(below: candidates.count)])
      out.append(Assignment(task: t.task, device: d))
    }
    return out
  }
}
