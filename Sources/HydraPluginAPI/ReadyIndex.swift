/// An order of ready tasks that a scheduler may ask the `ReadyIndex` for. Every order is total over
/// tasks of distinct models (ties go to the lower model index), so a scheduler that walks it gets
/// exactly what sorting the whole list with `precedes` would give.
public enum ReadyOrder: Hashable, Sendable {
  /// Longest `remainingSeconds` first (Sharded-LRTF). With `residentFirst`, a task whose shard state
  /// is on disk counts its `restoreSeconds` against its remaining time: a resident task goes first
  /// unless the one on disk has more than that much more left (with an unknown restore cost,
  /// every resident task goes first). Reading a state back is worth it for the model that is
  /// furthest from its end; never reading one starves a model whose state went to disk first
  /// until the others finish, and its whole chain is then the makespan's tail.
  case longestRemaining(residentFirst: Bool)
  /// As `longestRemaining`, by `secondsToNextRung` (`remainingSeconds` where no rung is ahead).
  case longestToNextRung(residentFirst: Bool)
  /// Earliest `readySince` first (first come, first served).
  case earliestReady
  /// As `longestRemaining`, by `remainingSeconds` times the model's weight: a planner's priorities.
  /// Where every weight is 1 it is `longestRemaining`; scaling every estimate by one factor (the
  /// machine is faster than the plan assumed) leaves it unchanged.
  case weightedRemaining(residentFirst: Bool, weights: ModelWeights)

  /// Whether `a` comes before `b` in this order.
  public func precedes(_ a: ReadyTask, _ b: ReadyTask) -> Bool {
    switch self {
    case .longestRemaining(let resident), .longestToNextRung(let resident), .weightedRemaining(let resident, _):
      let x: Double, y: Double
      switch self {
      case .longestToNextRung:
        (x, y) = (a.secondsToNextRung ?? a.remainingSeconds, b.secondsToNextRung ?? b.remainingSeconds)
      case .weightedRemaining(_, let w):
        (x, y) = (a.remainingSeconds * w[a.task.model], b.remainingSeconds * w[b.task.model])
      default:
        (x, y) = (a.remainingSeconds, b.remainingSeconds)
      }
      if resident {
        // The time left less what the disk costs: a key of the task alone, so the order is a
        // strict weak one (an infinite cost puts every task on disk after every resident one).
        let p = a.state == .disk ? x - a.restoreSeconds : x, q = b.state == .disk ? y - b.restoreSeconds : y
        if p != q { return p > q }
      }
      return x != y ? x > y : a.task.model < b.task.model
    case .earliestReady:
      return a.readySince != b.readySince ? a.readySince < b.readySince : a.task.model < b.task.model
    }
  }
}

/// Per-model weights for `ReadyOrder.weightedRemaining`, fixed once made (a new plan makes new
/// weights): equal only to itself, so that an index keeps one heap per set of weights.
public final class ModelWeights: Hashable, Sendable, CustomStringConvertible {
  public let values: [Double]
  public init(_ values: [Double]) { self.values = values }
  /// Model `m`'s weight; 1 for a model it has none for.
  public subscript(m: Int) -> Double { m >= 0 && m < values.count ? values[m] : 1 }
  public static func == (a: ModelWeights, b: ModelWeights) -> Bool { a === b }
  public func hash(into hasher: inout Hasher) { hasher.combine(ObjectIdentifier(self)) }
  public var description: String { "ModelWeights(\(values))" }
}

/// The ready tasks of a job, at most one per model, kept by the runtime as tasks become ready and
/// start (`insert`, `remove`), so that a decision costs O(log n) in the number of models instead of
/// a fresh list.
///
/// What it answers: the ready task of a model; the k-th ready model in index order and a model's
/// rank (a Fenwick tree over model indices); and the tasks in any `ReadyOrder`, walked lazily from a
/// binary heap of the models (built on the first request of that order, then kept up to date by
/// every `insert` and `remove`): taking the first k costs O(k log k), not a sort.
///
/// A scheduler only reads it, during `schedule`; the runtime changes it between decisions.
public final class ReadyIndex: @unchecked Sendable {
  /// Models it can hold: indices 0..<capacity.
  public let capacity: Int
  private var tasks: [ReadyTask?]
  /// Ready tasks.
  public private(set) var count = 0
  /// Ready tasks that name a home or the devices they may run on (only under a distributed
  /// backend); schedulers whose fast path assumes any task may run anywhere check it is 0.
  public private(set) var constrainedCount = 0
  /// Ready tasks that name a home (under a distributed backend, all of them).
  public private(set) var homedCount = 0
  /// Fenwick tree of "model m is ready", 1-based.
  private var tree: [Int]
  private var heaps: [ReadyOrder: ReadyHeap] = [:]
  /// Per order asked for by home: one heap per home device of the tasks homed there.
  private var homeHeaps: [ReadyOrder: HomeHeaps] = [:]
  /// The views made over this index since it last changed: a view kept past its decision (a
  /// scheduler that records views) is given a copy of the list before the index changes under it.
  private var views: [WeakStorage] = []

  public init(capacity: Int) {
    self.capacity = max(capacity, 0)
    tasks = Array(repeating: nil, count: self.capacity)
    tree = Array(repeating: 0, count: self.capacity + 1)
  }

  /// An index of `list`, for a view made from a list; nil when a model index in it is negative or
  /// appears twice (such a list is served by the list itself).
  public convenience init?(_ list: [ReadyTask], modelCount: Int) {
    var top = modelCount - 1
    for t in list {
      guard t.task.model >= 0 else { return nil }
      top = max(top, t.task.model)
    }
    self.init(capacity: top + 1)
    for t in list {
      guard tasks[t.task.model] == nil else { return nil }
      insert(t)
    }
  }

  public subscript(model m: Int) -> ReadyTask? { m >= 0 && m < capacity ? tasks[m] : nil }

  /// Makes `task` its model's ready task (replacing the one it had).
  public func insert(_ task: ReadyTask) {
    let m = task.model
    precondition(m >= 0 && m < capacity, "ReadyIndex: model \(m) outside 0..<\(capacity)")
    willChange()
    remove(model: m)
    tasks[m] = task
    count += 1
    if task.home != nil || task.allowedDevices != nil { constrainedCount += 1 }
    add(m, 1)
    for heap in heaps.values { heap.insert(m, tasks) }
    if let home = task.home {
      homedCount += 1
      for heaps in homeHeaps.values { heaps.insert(m, home: home, tasks) }
    }
  }

  /// The model has no ready task any more (it started, or finished).
  public func remove(model m: Int) {
    guard let old = self[model: m] else { return }
    willChange()
    for heap in heaps.values { heap.remove(m, tasks) }
    if old.home != nil {
      homedCount -= 1
      for heaps in homeHeaps.values { heaps.remove(m, tasks) }
    }
    tasks[m] = nil
    count -= 1
    if old.home != nil || old.allowedDevices != nil { constrainedCount -= 1 }
    add(m, -1)
  }

  /// Every ready task, in model order: O(capacity).
  public var all: [ReadyTask] { tasks.compactMap { $0 } }

  /// Ready models below `m`.
  public func rank(of m: Int) -> Int {
    var i = min(max(m, 0), capacity), s = 0
    while i > 0 {
      s += tree[i]
      i -= i & -i
    }
    return s
  }

  /// The `k`-th ready model (0-based) in index order; `k` in 0..<count.
  public func model(atRank k: Int) -> Int {
    precondition(k >= 0 && k < count, "ReadyIndex: rank \(k) outside 0..<\(count)")
    var position = 0, left = k + 1, step = 1
    while step * 2 <= capacity { step *= 2 }
    while step > 0 {
      if position + step <= capacity && tree[position + step] < left {
        position += step
        left -= tree[position]
      }
      step /= 2
    }
    return position
  }

  /// The first ready model at index `m` or above, if any.
  public func firstModel(atOrAfter m: Int) -> Int? {
    let k = rank(of: m)
    return k < count ? model(atRank: k) : nil
  }

  /// The ready tasks in `order`, produced lazily. Valid until the index next changes.
  public func ordered(_ order: ReadyOrder) -> OrderedReadyTasks {
    let heap: ReadyHeap
    if let h = heaps[order] {
      heap = h
    } else {
      heap = ReadyHeap(order: order, capacity: capacity)
      for m in 0..<capacity where tasks[m] != nil { heap.insert(m, tasks) }
      heaps[order] = heap
    }
    return OrderedReadyTasks(heap: heap.items, tasks: tasks, order: order)
  }

  /// The ready tasks whose home is device `home`, in `order`, produced lazily: the first costs
  /// O(1) and each next O(log k), whatever the number of models homed elsewhere. The heaps of an
  /// order are built (O(n)) on its first request by home, then kept up to date. Valid until the
  /// index next changes.
  public func ordered(_ order: ReadyOrder, home: Int) -> OrderedReadyTasks {
    let byHome: HomeHeaps
    if let h = homeHeaps[order] {
      byHome = h
    } else {
      byHome = HomeHeaps(order: order, capacity: capacity)
      for m in 0..<capacity { if let t = tasks[m], let h = t.home { byHome.insert(m, home: h, tasks) } }
      homeHeaps[order] = byHome
    }
    return OrderedReadyTasks(heap: byHome.heap(home), tasks: tasks, order: order)
  }

  /// Drops the heaps kept for `order` (a scheduler that replaced its weights no longer asks for the
  /// old ones; their heaps would otherwise be kept up to date for nothing).
  public func forget(_ order: ReadyOrder) {
    heaps[order] = nil
    homeHeaps[order] = nil
  }

  /// A view over this index is being made (`SchedulerView.init(now:readyIndex:...)`).
  func register(_ view: ReadyStorage) {
    views.removeAll { $0.storage == nil }
    views.append(WeakStorage(storage: view))
  }

  /// Views still alive keep the list as it is now (O(models) each; none in the runtime's loop,
  /// whose views are gone by the time it changes the index).
  private func willChange() {
    guard !views.isEmpty else { return }
    for v in views { v.storage?.detach(from: self) }
    views.removeAll()
  }

  private func add(_ m: Int, _ delta: Int) {
    var i = m + 1
    while i <= capacity {
      tree[i] += delta
      i += i & -i
    }
  }
}

struct WeakStorage {
  weak var storage: ReadyStorage?
}

/// The two moves of a binary min-heap kept in an array, for heaps that keep more than the array
/// (positions, indices into other arrays): `less(i, j)` compares the entries at `i` and `j`, and
/// `swap(i, j)` exchanges them. The one copy of the sifting loops, for the ready index, its ordered
/// walk and the simulator's completions.
public enum HeapSift {
  /// Moves the entry at `start` towards the root while it is less than its parent.
  @inlinable
  public static func up(from start: Int, less: (Int, Int) -> Bool, swap: (Int, Int) -> Void) {
    var i = start
    while i > 0 {
      let parent = (i - 1) / 2
      guard less(i, parent) else { return }
      swap(i, parent)
      i = parent
    }
  }

  /// Moves the entry at `start` away from the root, among the first `count` entries, while a child
  /// is less than it.
  @inlinable
  public static func down(from start: Int, count: Int, less: (Int, Int) -> Bool, swap: (Int, Int) -> Void) {
    var i = start
    while true {
      let l = 2 * i + 1, r = l + 1
      var best = i
      if l < count && less(l, best) { best = l }
      if r < count && less(r, best) { best = r }
      guard best != i else { return }
      swap(i, best)
      i = best
    }
  }
}

/// A binary min-heap of model indices in one `ReadyOrder`, with each model's position so that a
/// model leaves it in O(log n).
final class ReadyHeap {
  let order: ReadyOrder
  private(set) var items: [Int] = []
  private var position: [Int]

  init(order: ReadyOrder, capacity: Int) {
    self.order = order
    position = Array(repeating: -1, count: capacity)
  }

  private func less(_ i: Int, _ j: Int, _ tasks: [ReadyTask?]) -> Bool {
    order.precedes(tasks[items[i]]!, tasks[items[j]]!)
  }

  private func swapAt(_ i: Int, _ j: Int) {
    items.swapAt(i, j)
    position[items[i]] = i
    position[items[j]] = j
  }

  func insert(_ m: Int, _ tasks: [ReadyTask?]) {
    items.append(m)
    position[m] = items.count - 1
    up(items.count - 1, tasks)
  }

  func remove(_ m: Int, _ tasks: [ReadyTask?]) {
    let i = position[m]
    guard i >= 0 else { return }
    let last = items.count - 1
    if i != last { swapAt(i, last) }
    items.removeLast()
    position[m] = -1
    if i < items.count {
      up(i, tasks)
      down(i, tasks)
    }
  }

  private func up(_ start: Int, _ tasks: [ReadyTask?]) {
    HeapSift.up(from: start, less: { less($0, $1, tasks) }, swap: swapAt)
  }

  private func down(_ start: Int, _ tasks: [ReadyTask?]) {
    HeapSift.down(from: start, count: items.count, less: { less($0, $1, tasks) }, swap: swapAt)
  }
}

/// The models homed on each device, one binary min-heap per home in one `ReadyOrder`, with one
/// position array for all of them (a model is in at most one): O(capacity + homes) memory.
final class HomeHeaps {
  let order: ReadyOrder
  private var items: [[Int]] = []
  private var position: [Int]
  private var homeOf: [Int]

  init(order: ReadyOrder, capacity: Int) {
    self.order = order
    position = Array(repeating: -1, count: capacity)
    homeOf = Array(repeating: -1, count: capacity)
  }

  /// The heap of the models homed on `home` (empty for a home no model has).
  func heap(_ home: Int) -> [Int] { home >= 0 && home < items.count ? items[home] : [] }

  func insert(_ m: Int, home: Int, _ tasks: [ReadyTask?]) {
    guard home >= 0 else { return }
    if home >= items.count { items += Array(repeating: [], count: home - items.count + 1) }
    items[home].append(m)
    position[m] = items[home].count - 1
    homeOf[m] = home
    sift(home, up: items[home].count - 1, tasks)
  }

  func remove(_ m: Int, _ tasks: [ReadyTask?]) {
    let i = position[m], h = homeOf[m]
    guard i >= 0, h >= 0 else { return }
    let last = items[h].count - 1
    if i != last { swapAt(h, i, last) }
    items[h].removeLast()
    position[m] = -1
    homeOf[m] = -1
    if i < items[h].count {
      sift(h, up: i, tasks)
      HeapSift.down(
        from: i, count: items[h].count, less: { self.less(h, $0, $1, tasks) }, swap: { self.swapAt(h, $0, $1) })
    }
  }

  private func less(_ h: Int, _ i: Int, _ j: Int, _ tasks: [ReadyTask?]) -> Bool {
    order.precedes(tasks[items[h][i]]!, tasks[items[h][j]]!)
  }

  private func swapAt(_ h: Int, _ i: Int, _ j: Int) {
    items[h].swapAt(i, j)
    position[items[h][i]] = i
    position[items[h][j]] = j
  }

  private func sift(_ h: Int, up start: Int, _ tasks: [ReadyTask?]) {
    HeapSift.up(from: start, less: { less(h, $0, $1, tasks) }, swap: { swapAt(h, $0, $1) })
  }
}

/// Ready tasks in one order, walked from the heap without changing it: a second, small heap holds
/// the frontier (positions whose parent was produced), so the first k cost O(k log k).
public struct OrderedReadyTasks: Sequence, IteratorProtocol {
  let heap: [Int]
  let tasks: [ReadyTask?]
  let order: ReadyOrder
  private var frontier: [Int] = []

  init(heap: [Int], tasks: [ReadyTask?], order: ReadyOrder) {
    self.heap = heap
    self.tasks = tasks
    self.order = order
    if !heap.isEmpty { frontier = [0] }
  }

  private func less(_ i: Int, _ j: Int) -> Bool {
    order.precedes(tasks[heap[frontier[i]]]!, tasks[heap[frontier[j]]]!)
  }

  public mutating func next() -> ReadyTask? {
    guard !frontier.isEmpty else { return nil }
    let top = frontier[0]
    let last = frontier.removeLast()
    if !frontier.isEmpty {
      frontier[0] = last
      siftDown()
    }
    if 2 * top + 1 < heap.count {
      frontier.append(2 * top + 1)
      siftUp()
    }
    if 2 * top + 2 < heap.count {
      frontier.append(2 * top + 2)
      siftUp()
    }
    return tasks[heap[top]]
  }

  private mutating func siftUp() {
    HeapSift.up(from: frontier.count - 1, less: { less($0, $1) }, swap: { frontier.swapAt($0, $1) })
  }

  private mutating func siftDown() {
    HeapSift.down(from: 0, count: frontier.count, less: { less($0, $1) }, swap: { frontier.swapAt($0, $1) })
  }
}

extension ReadyTask {
  var model: Int { task.model }
}
