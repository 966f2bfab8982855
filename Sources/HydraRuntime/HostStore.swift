import Foundation
import HydraCore

/// The state of one shard of one model, as the host store moves it; or (`shard` < 0) tensors a
/// model keeps between two of its tasks: a boundary activation or gradient, a tied weight in
/// transit, the activations a forward kept for its backward.
public final class ShardState {
  public let model: String
  public let shard: Int
  /// For tensors in transit: what they are, for the spill file's name.
  let label: String
  /// Parameters and optimizer state: what must survive a trip to disk.
  let persistent: [Tensor]
  /// For each of `persistent`: a parameter's value (else optimizer state).
  let isValue: [Bool]
  /// Gradients: zeroed at the start of every backward and used up within it, so never written to
  /// disk nor copied between a device and the host: they exist only on a device (and arrive
  /// zero there), never in the store's RAM, which holds a quarter more of AdamW's states that way.
  let transient: [Tensor]
  public fileprivate(set) var residency: Residency = .host
  fileprivate var lastUse = 0
  /// Just built: resident in RAM but charged nowhere yet.
  fileprivate var uncharged = true
  /// A task of this shard is running (between `beginTask` and `endTask`): its kernels hold the
  /// addresses of its tensors, so nothing may move it (a prefetch for another device, a spill).
  fileprivate var inUse = false

  init(model: String, shard: Int, parameters: [Parameter]) {
    self.model = model
    self.shard = shard
    label = "s\(shard)"
    let owned = parameters
    persistent = owned.flatMap { [$0.value] + $0.state }
    isValue = owned.flatMap { [true] + Array(repeating: false, count: $0.state.count) }
    transient = owned.map(\.grad)
  }

  /// Tensors in transit between a model's tasks: all of them survive a trip to disk.
  init(model: String, label: String, tensors: [Tensor]) {
    self.model = model
    shard = -1
    self.label = label
    persistent = tensors
    isValue = Array(repeating: false, count: tensors.count)
    transient = []
  }

  /// Bytes this shard's state takes on a device (parameters, optimizer state, gradients).
  public var bytes: Int { (persistent + transient).reduce(0) { $0 + $1.capacity * 4 } }
  /// Bytes it takes in the store's RAM: no gradients.
  public var hostBytes: Int { persistent.reduce(0) { $0 + $1.capacity * 4 } }
  /// Bytes of the parameters and optimizer state (what moves between processes, or to disk).
  public var persistentBytes: Int { persistent.reduce(0) { $0 + $1.byteCount } }
  /// Bytes of the parameters' values alone.
  public var valueBytes: Int { zip(persistent, isValue).reduce(0) { $0 + ($1.1 ? $1.0.byteCount : 0) } }
}

/// The host store: shard state that is not on a device lives here, in RAM up to `host_memory`
/// and past that in files under the job's output folder (`spill/`), least recently used first.
///
/// On the CPU a device's memory and the host's are the same RAM, so promotion from RAM and
/// spilling back are accounting moves between two budgets; the disk tier is real I/O. Every
/// movement happens under one lock, so a prefetch that is reading a shard makes a promotion of
/// the same shard wait for it rather than race it.
public final class HostStore: @unchecked Sendable {
  public let memory: DeviceMemory
  public let folder: String
  private let lock = NSLock()
  private var states: [ShardState] = []
  private var clock = 0
  private var serial = 0
  private var deviceMemories: [Int: DeviceMemory] = [:]
  public private(set) var bytesWritten = 0
  public private(set) var bytesRead = 0
  /// Seconds spent reading `bytesRead` back.
  private var readSeconds = 0.0
  /// Bytes a second the store reads shard state back from disk at: measured once it has read
  /// 64 MiB, before that 500 MB/s (a SATA SSD's rate, about what this project's machines give
  /// with direct I/O).
  public var diskReadRate: Double {
    lock.lock()
    defer { lock.unlock() }
    return bytesRead >= 64 << 20 && readSeconds > 0 ? Double(bytesRead) / readSeconds : 500e6
  }
  /// Of `bytesWritten`, the bytes of tensors in transit between a model's tasks (not shard state).
  public private(set) var transitBytesWritten = 0
  /// The most RAM the store itself held at once.
  public var peakBytes: Int { memory.peak }
  private let prefetchQueue = DispatchQueue(label: "hydra.host-store.prefetch")
  /// Shard states whose residency changed since `takeMoves`, once `journalMoves` was called (the
  /// coordinator keeps its ready tasks' residency up to date from it instead of asking every model).
  private var moved: [(model: String, shard: Int)] = []
  private var journaling = false

  public init(budget: Int, folder: String) {
    memory = DeviceMemory(budget: budget, label: "host store")
    self.folder = folder
  }

  deinit { removeSpillFiles() }

  /// Deletes the spill folder. Only once nothing will be read back from it.
  public func removeSpillFiles() {
    try? FileManager.default.removeItem(atPath: folder)
    // Under mpi each rank spills to `spill/rank-N`: the last rank to finish removes `spill` too.
    let parent = (folder as NSString).deletingLastPathComponent
    if (parent as NSString).lastPathComponent == "spill" { rmdir(parent) }
  }

  public func attach(device index: Int, memory: DeviceMemory) {
    lock.lock()
    deviceMemories[index] = memory
    lock.unlock()
  }

  /// Takes a newly built shard (its tensors uncharged) into RAM, or to disk when RAM is full.
  public func admit(_ state: ShardState) throws {
    lock.lock()
    defer { lock.unlock() }
    states.append(state)
    try takeIn(state)
  }

  /// Under the lock: a state whose bytes are resident but charged nowhere (just built, or just
  /// come from another process) goes into RAM, or to disk when RAM is full.
  private func takeIn(_ state: ShardState) throws {
    clock += 1
    state.lastUse = clock
    state.uncharged = true
    setResidency(state, .disk)  // not yet charged anywhere
    try bringToHost(state, pinned: [])
  }

  /// Makes `state` resident on device `index` with `footprint` bytes free for it in all (its state
  /// and what its task allocates), spilling least recently used shards of that device to the
  /// store (and the store's to disk) to make room. `pinned` shards are never spilled. Throws,
  /// moving nothing, when the device cannot make room. (A running task's working set is a lump of
  /// the device's memory already: nothing here can take it.)
  public func promote(_ state: ShardState, to index: Int, footprint: Int = 0, pinned: [ShardState] = []) throws {
    lock.lock()
    defer { lock.unlock() }
    try promoteLocked(state, to: index, footprint: footprint, pinned: pinned)
  }

  private func promoteLocked(_ state: ShardState, to index: Int, footprint: Int, pinned: [ShardState]) throws {
    clock += 1
    state.lastUse = clock
    let device = deviceMemories[index]!
    if state.residency == .elsewhere {
      throw RuntimeError("the state of \(state.model) shard \(state.shard) is held by another process, not this one")
    }
    let resident = state.residency == .device(index)
    if state.inUse && !resident {
      // A prefetch that a scheduler's later choice overtook: the shard runs on another device now.
      throw RuntimeError("the state of \(state.model) shard \(state.shard) is in use by a task on another device")
    }
    let need = max(footprint, state.bytes) - (resident ? state.bytes : 0)
    try makeRoom(on: index, device, bytes: need, pinned: pinned + [state])
    if resident { return }
    // All or nothing: a shard is never left half on the device.
    if device.budget - device.used < state.bytes {
      throw DeviceMemoryError(label: device.label, requested: state.bytes, used: device.used, budget: device.budget)
    }
    switch state.residency {
    case .device:
      for t in state.persistent { try t.move(to: device) }
      for t in state.transient { try t.move(to: device, keepingValues: false) }
    case .host:
      for t in state.persistent { try t.move(to: device) }
      // The store's RAM holds no gradients: charged again, parked (a backward makes them, zero).
      for t in state.transient { try t.restoreParked(memory: device) }
    case .disk:
      try restore(state, into: device)
    case .elsewhere:
      preconditionFailure("checked above")
    }
    setResidency(state, .device(index))
  }

  /// Starts a task of `state`'s shard on device `index`: makes the state resident there (as
  /// `promote` does) and opens the device's `workingSet` with `bytes` for what the task allocates,
  /// in one step under the store's lock, so that no prefetch can take the room in between.
  public func beginTask(_ state: ShardState, on index: Int, workingSet: DeviceMemory, bytes: Int) throws {
    lock.lock()
    defer { lock.unlock() }
    precondition(workingSet.parent === deviceMemories[index], "the working set of another device")
    try promoteLocked(state, to: index, footprint: state.bytes + bytes, pinned: [])
    try workingSet.open(bytes)
    state.inUse = true
  }

  /// The task `beginTask` started has ended: its state may move again.
  public func endTask(_ state: ShardState) {
    lock.lock()
    state.inUse = false
    lock.unlock()
  }

  /// Takes tensors a model keeps between its tasks (charged to a task's working set, or to
  /// nothing) into RAM, or to disk when RAM is full: an entry `take` gives back.
  public func hold(_ tensors: [Tensor], model: String, label: String) throws -> ShardState {
    lock.lock()
    defer { lock.unlock() }
    serial += 1
    let entry = ShardState(model: model, label: "\(label)-\(serial)", tensors: tensors)
    states.append(entry)
    try takeIn(entry)
    return entry
  }

  /// Gives an entry of `hold` back, its tensors resident again and charged to `memory` (a task's
  /// working set); the store forgets it.
  public func take(_ entry: ShardState, into memory: DeviceMemory?) throws {
    lock.lock()
    defer { lock.unlock() }
    guard let i = states.firstIndex(where: { $0 === entry }) else { return }
    switch entry.residency {
    case .disk:
      try restore(entry, into: memory)
      unlink(path(entry))
    default:
      for t in entry.persistent { try t.move(to: memory) }
    }
    states.remove(at: i)
    setResidency(entry, .elsewhere)
  }

  /// Drops an entry of `hold` that nothing will take (a model stopped mid-step): its tensors are
  /// freed once nothing else holds them.
  public func forget(_ entry: ShardState) {
    lock.lock()
    defer { lock.unlock() }
    guard let i = states.firstIndex(where: { $0 === entry }) else { return }
    states.remove(at: i)
    if entry.residency == .disk { unlink(path(entry)) }
    setResidency(entry, .elsewhere)
  }

  /// Bytes of shard states resident on device `index` now.
  public func residentOn(device index: Int) -> Int {
    lock.lock()
    defer { lock.unlock() }
    return states.filter { $0.residency == .device(index) }.reduce(0) { $0 + $1.bytes }
  }

  /// Entries of `hold` the store has now (none once every model is done).
  public var heldEntries: Int {
    lock.lock()
    defer { lock.unlock() }
    return states.filter { $0.shard < 0 }.count
  }

  /// Starts promoting `state` to device `index` on a background thread (double buffering): the
  /// shards it displaces are spilled, and its bytes read from disk if need be, while the `pinned`
  /// (running) shard computes, so that the later `promote` finds it resident. Best effort: when
  /// there is no room yet, the later `promote` does the work.
  public func prefetch(_ state: ShardState, to index: Int, pinned: [ShardState]) {
    prefetchQueue.async { [self] in
      try? promote(state, to: index, pinned: pinned)
    }
  }

  /// From now on, remembers which states change residency, until `takeMoves` hands them over.
  public func journalMoves() {
    lock.lock()
    journaling = true
    lock.unlock()
  }

  /// The states (model id, shard) whose residency changed since the last call.
  public func takeMoves() -> [(model: String, shard: Int)] {
    lock.lock()
    defer { lock.unlock() }
    let out = moved
    moved.removeAll(keepingCapacity: true)
    return out
  }

  /// Under the lock.
  private func setResidency(_ state: ShardState, _ residency: Residency) {
    state.residency = residency
    if journaling { moved.append((state.model, state.shard)) }
  }

  /// Where `state` is, read under the store's lock (a prefetch may be moving it).
  public func residency(of state: ShardState) -> Residency {
    lock.lock()
    defer { lock.unlock() }
    return state.residency
  }

  /// Copies `state`'s parameters and optimizer state, in a fixed order, into `packed`
  /// (`persistentBytes` long), wherever the state is: a device, RAM or its spill file. Moves nothing.
  /// With `valuesOnly`, the parameters' values alone (`valueBytes`), without optimizer state.
  public func read(_ state: ShardState, into packed: Tensor, valuesOnly: Bool = false) throws {
    try checkPacked(state, packed, valuesOnly: valuesOnly)
    lock.lock()
    defer { lock.unlock() }
    try copy(state, UnsafeMutableRawPointer(packed.data), toState: false, valuesOnly: valuesOnly)
  }

  private func checkPacked(_ state: ShardState, _ packed: Tensor, valuesOnly: Bool) throws {
    let expected = valuesOnly ? state.valueBytes : state.persistentBytes
    guard packed.byteCount == expected else {
      throw RuntimeError(
        "\(state.model) shard \(state.shard): a packed state of \(packed.byteCount) bytes, where the shard holds \(expected)"
      )
    }
  }

  /// Overwrites `state`'s parameters and optimizer state with `packed` (laid out as `read` writes
  /// it), wherever the state is. Moves nothing.
  /// A state held elsewhere comes back (in RAM, or on disk when RAM is full).
  /// With `valuesOnly`, `packed` holds the parameters' values alone; a state that comes back
  /// that way has zero optimizer state (good for an evaluation, not for training).
  public func write(_ state: ShardState, from packed: Tensor, valuesOnly: Bool = false) throws {
    try checkPacked(state, packed, valuesOnly: valuesOnly)
    let buffer = UnsafeRawPointer(packed.data)
    lock.lock()
    defer { lock.unlock() }
    if state.residency == .elsewhere {
      // Fresh bytes, charged nowhere yet; then into the store like a newly built shard.
      for t in state.persistent { try t.restore(from: nil, offset: 0, memory: nil) }
      for t in state.transient { try t.restoreParked(memory: nil) }
      try copy(state, UnsafeMutableRawPointer(mutating: buffer), toState: true, valuesOnly: valuesOnly, resident: true)
      return try takeIn(state)
    }
    try copy(state, UnsafeMutableRawPointer(mutating: buffer), toState: true, valuesOnly: valuesOnly)
  }

  /// Takes a newly built shard that another process holds: its bytes are freed at once, never
  /// charged or written anywhere. `write` brings it here later.
  public func adoptReleased(_ state: ShardState) {
    lock.lock()
    defer { lock.unlock() }
    states.append(state)
    letGo(state)
  }

  /// Frees every byte of `state` in this process, wherever it was: another process holds it now
  /// (its home under `mpi`). `write` brings it back.
  public func release(_ state: ShardState) {
    lock.lock()
    defer { lock.unlock() }
    if state.residency == .elsewhere { return }
    letGo(state)
  }

  /// Under the lock: frees the state's bytes without writing them anywhere.
  private func letGo(_ state: ShardState) {
    for t in state.persistent + state.transient { try? t.evict(to: nil, offset: 0) }
    state.uncharged = false
    setResidency(state, .elsewhere)
  }

  /// Copies between `buffer` and the state's tensors (values and optimizer state in order, or the
  /// values alone), from or to its spill file when it is on disk (the file holds them all in order).
  private func copy(
    _ state: ShardState, _ buffer: UnsafeMutableRawPointer, toState: Bool, valuesOnly: Bool = false,
    resident: Bool = false
  ) throws {
    if state.residency == .elsewhere && !resident {
      throw RuntimeError("the state of \(state.model) shard \(state.shard) is held by another process, not this one")
    }
    let file = state.residency == .disk && !resident ? try spillFile(state, writable: toState) : nil
    var offset = 0, fileOffset = 0
    for (t, value) in zip(state.persistent, state.isValue) {
      defer { fileOffset += SpillFile.slot(t.byteCount) }
      if valuesOnly && !value { continue }
      if let file {
        try file.transfer(buffer + offset, t.byteCount, at: fileOffset, reading: !toState)
      } else if toState {
        t.write(from: buffer + offset)
      } else {
        t.read(into: buffer + offset)
      }
      offset += t.byteCount
    }
  }

  /// Calls `body` with each of `state`'s parameters and optimizer state in turn (the order of
  /// `read`), as host values, where the store keeps them, without moving the state: RAM in place,
  /// a spill file through one buffer of the largest tensor. For a checkpoint written off the
  /// device threads, while the model is held from running: the state is pinned meanwhile (no
  /// other shard's promotion or spill moves it), and the store's lock is not held during `body`,
  /// so the devices go on promoting and spilling other shards. A state on a device (a prefetch
  /// of the model's next step may have brought it back since `demote`) comes off it first: a
  /// device's memory is its kernels' to reach; while pinned, no prefetch moves it again.
  public func readInPlace(_ state: ShardState, _ body: (UnsafeBufferPointer<Float>) throws -> Void) throws {
    lock.lock()
    if case .device = state.residency {
      do {
        try bringToHost(state, pinned: [])
      } catch {
        lock.unlock()
        throw error
      }
    }
    if state.residency == .elsewhere {
      lock.unlock()
      throw RuntimeError("the state of \(state.model) shard \(state.shard) is held by another process, not this one")
    }
    precondition(!state.inUse, "\(state.model) shard \(state.shard) read in place while in use")
    state.inUse = true
    let onDisk = state.residency == .disk
    lock.unlock()
    defer {
      lock.lock()
      state.inUse = false
      lock.unlock()
    }
    guard onDisk else {
      for t in state.persistent { try t.withHostBuffer { try body($0) } }
      return
    }
    let file = try spillFile(state, writable: false)
    // One buffer of the largest tensor's slot, aligned: each tensor comes back past the page cache.
    let room = SpillFile.slot(max(state.persistent.map(\.byteCount).max() ?? 0, 1))
    let buffer = UnsafeMutableRawPointer.allocate(byteCount: room, alignment: SpillFile.alignment)
    defer { buffer.deallocate() }
    var offset = 0
    for t in state.persistent {
      try file.transfer(buffer, t.byteCount, at: offset, reading: true, room: room)
      try body(UnsafeBufferPointer(start: buffer.assumingMemoryBound(to: Float.self), count: t.count))
      offset += SpillFile.slot(t.byteCount)
    }
  }

  /// Moves `state` off its device into the store (RAM, or disk when RAM is full); a state already
  /// in the store, or held by another process, stays where it is.
  public func demote(_ state: ShardState) throws {
    lock.lock()
    defer { lock.unlock() }
    guard case .device = state.residency else { return }
    try bringToHost(state, pinned: [])
  }

  /// Waits for every prefetch started so far.
  public func drain() { prefetchQueue.sync {} }

  // MARK: - Under the lock

  private func makeRoom(on index: Int, _ device: DeviceMemory, bytes: Int, pinned: [ShardState]) throws {
    while device.budget - device.used < bytes {
      let candidates = states.filter { s in
        s.residency == .device(index) && !s.inUse && !pinned.contains { $0 === s }
      }
      guard let victim = candidates.min(by: { $0.lastUse < $1.lastUse }) else { return }
      try bringToHost(victim, pinned: pinned)
    }
  }

  /// Moves `state` into the store's RAM, evicting least recently used store shards to disk for
  /// room; writes `state` itself to disk when it cannot fit at all.
  private func bringToHost(_ state: ShardState, pinned: [ShardState]) throws {
    if state.residency == .host || state.residency == .elsewhere { return }
    while memory.budget - memory.used < state.hostBytes {
      let candidates = states.filter { s in
        s.residency == .host && s !== state && !s.inUse && !pinned.contains { $0 === s }
      }
      guard let victim = candidates.min(by: { $0.lastUse < $1.lastUse }) else { break }
      try evict(victim)
    }
    if memory.budget - memory.used < state.hostBytes {
      if state.residency != .disk || state.uncharged { try evict(state) }
      return
    }
    switch state.residency {
    case .disk:
      if state.uncharged {
        for t in state.persistent { try t.move(to: memory) }
        for t in state.transient { try t.evict(to: nil, offset: 0) }
        state.uncharged = false
      } else {
        try restore(state, into: memory, gradients: false)
      }
    case .device:
      for t in state.persistent { try t.move(to: memory) }
      for t in state.transient { try t.evict(to: nil, offset: 0) }
    case .host: break
    case .elsewhere: return  // nothing here to bring
    }
    setResidency(state, .host)
  }

  private func path(_ state: ShardState) -> String { "\(folder)/\(state.model)-\(state.label).bin" }

  private func evict(_ state: ShardState) throws {
    var isFolder: ObjCBool = false
    let exists = FileManager.default.fileExists(atPath: folder, isDirectory: &isFolder)
    if !exists || !isFolder.boolValue {
      do {
        if exists { throw RuntimeError("a file of that name is in the way") }
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
      } catch {
        let why = (error as? RuntimeError)?.description ?? (error as NSError).localizedDescription
        throw RuntimeError("cannot create the spill folder \(folder) (for shard state past host_memory): \(why)")
      }
    }
    let file = try spillFile(state, writable: true, create: true)
    // Each tensor at an aligned offset of the file (`SpillFile.slot`), so that its pages move by
    // direct I/O; the counts are of the tensors' own bytes.
    var offset = 0, bytes = 0
    for t in state.persistent {
      try t.evict(to: file, offset: offset)
      offset += SpillFile.slot(t.byteCount)
      bytes += t.byteCount
    }
    for t in state.transient { try t.evict(to: nil, offset: 0) }
    bytesWritten += bytes
    if state.shard < 0 { transitBytesWritten += bytes }
    state.uncharged = false
    setResidency(state, .disk)
  }

  /// The spill file of `state`, open.
  private func spillFile(_ state: ShardState, writable: Bool, create: Bool = false) throws -> SpillFile {
    try SpillFile(path: path(state), writable: writable, create: create)
  }

  /// Reads `state` back from its spill file into `target`; with `gradients`, its gradients are
  /// made again (zero) there too (for a device; the store's RAM holds none).
  private func restore(_ state: ShardState, into target: DeviceMemory?, gradients: Bool = true) throws {
    let started = DispatchTime.now().uptimeNanoseconds
    let file = try spillFile(state, writable: false)
    var offset = 0, bytes = 0
    for t in state.persistent {
      try t.restore(from: file, offset: offset, memory: target)
      offset += SpillFile.slot(t.byteCount)
      bytes += t.byteCount
    }
    bytesRead += bytes
    readSeconds += Double(DispatchTime.now().uptimeNanoseconds - started) / 1e9
    if gradients { for t in state.transient { try t.restoreParked(memory: target) } }
  }
}
