import CSysCalls
import Foundation

/// A contiguous, row-major, 64-byte aligned Float32 buffer with an explicit shape, charged to one
/// `DeviceMemory` (a device, or the host store) for as long as it holds its bytes.
///
/// Tensors are reference types: handing one from a block to the next (or from one device thread to
/// another under `shm`) is a reference, never a copy. The bytes live where the memory they are
/// charged to keeps them (`DeviceMemory.buffers`): host RAM, or a device buffer of the device's
/// kernels plugin (`deviceBuffers`), which only that plugin's kernels and copies may touch. Moving a
/// tensor between memories (`move(to:)`) is a change of charge when both keep their bytes in the
/// same place (on the CPU, device and host memory are the same RAM) and a copy through the plugin
/// when they do not; `evict(to:offset:)` and `restore(from:offset:memory:)` leave for a file and
/// come back. The host reads or writes the values only through `read(into:)`, `write(from:)`,
/// `withHostBuffer` and `array`, which copy through the plugin when the bytes are on a device.
public final class Tensor: @unchecked Sendable {
  public static let alignment = 64

  public private(set) var shape: [Int]
  public let capacity: Int
  private var storage: UnsafeMutablePointer<Float>?
  public private(set) var memory: DeviceMemory?
  /// The device memory holding the bytes; nil: host RAM.
  public private(set) var deviceBuffers: DeviceBuffers?

  /// The address of the bytes, only while the tensor is resident (not evicted to a file): in host
  /// RAM, or in the device memory of `deviceBuffers`, where only that plugin's kernels may
  /// dereference it (the runtime hands it to them; it reads values through `read(into:)`).
  public var data: UnsafeMutablePointer<Float> {
    guard let storage else {
      preconditionFailure("tensor \(shape) used while \(isParked ? "parked (no bytes until unpark)" : "evicted to disk")")
    }
    return storage
  }

  public var isResident: Bool { storage != nil }
  /// Parked (`park`): the bytes were given back while the charge to `memory` stays.
  public private(set) var isParked = false
  private var allocatedBytes: Int { max(capacity, 1) * MemoryLayout<Float>.stride }

  /// Buffers this large are mapped from the kernel (`MappedBuffers`), never taken from malloc: a
  /// freed buffer of a few MiB stays in malloc's heap (glibc raises its mmap threshold after each
  /// large free) and the process's resident memory drifts gigabytes past what the budgets account
  /// for.
  static let mappedBytes = 256 << 10

  /// Bytes of host RAM at a tensor's storage that a transfer may read over or write from: a
  /// mapped buffer is whole pages, so a spill file's direct I/O may move its last page whole.
  static func hostRoom(_ count: Int) -> Int {
    let bytes = max(count, 1) * MemoryLayout<Float>.stride
    return bytes >= mappedBytes ? MappedBuffers.rounded(bytes) : bytes
  }

  /// Storage for `count` floats (at least one), 64-byte aligned, in host RAM or (`buffers`) device
  /// memory; zero-filled when `zeroed`.
  private static func allocate(_ count: Int, zeroed: Bool, in buffers: DeviceBuffers?) -> UnsafeMutablePointer<Float> {
    let bytes = max(count, 1) * MemoryLayout<Float>.stride
    if let buffers {
      return buffers.allocate(byteCount: bytes, zeroed: zeroed).assumingMemoryBound(to: Float.self)
    }
    if bytes >= mappedBytes {
      return MappedBuffers.shared.take(bytes, zeroed: zeroed).bindMemory(to: Float.self, capacity: max(count, 1))
    }
    let raw = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: Tensor.alignment)
    if zeroed { raw.initializeMemory(as: Float.self, repeating: 0, count: max(count, 1)) }
    return raw.assumingMemoryBound(to: Float.self)
  }

  private static func deallocate(_ p: UnsafeMutablePointer<Float>, count: Int, in buffers: DeviceBuffers?) {
    let bytes = max(count, 1) * MemoryLayout<Float>.stride
    if let buffers {
      buffers.deallocate(UnsafeMutableRawPointer(p), byteCount: bytes)
    } else if bytes >= mappedBytes {
      MappedBuffers.shared.give(UnsafeMutableRawPointer(p), bytes)
    } else {
      UnsafeMutableRawPointer(p).deallocate()
    }
  }

  /// Copies `byteCount` bytes between two places, each host RAM (nil) or a plugin's device memory:
  /// the only way bytes cross between them. Two different devices go through a host buffer.
  static func transfer(
    _ source: UnsafeRawPointer, in from: DeviceBuffers?, to destination: UnsafeMutableRawPointer,
    in to: DeviceBuffers?, byteCount: Int
  ) {
    guard byteCount > 0 else { return }
    switch (from, to) {
    case (nil, nil):
      destination.copyMemory(from: source, byteCount: byteCount)
    case (nil, let device?):
      device.copy(fromHost: source, toDevice: destination, byteCount: byteCount)
    case (let device?, nil):
      device.copy(fromDevice: source, toHost: destination, byteCount: byteCount)
    case (let a?, let b?):
      if a === b { return a.copy(onDevice: source, to: destination, byteCount: byteCount) }
      let staging = UnsafeMutableRawPointer.allocate(byteCount: byteCount, alignment: alignment)
      defer { staging.deallocate() }
      a.copy(fromDevice: source, toHost: staging, byteCount: byteCount)
      b.copy(fromHost: staging, toDevice: destination, byteCount: byteCount)
    }
  }

  /// Allocates a tensor, zero-filled unless `zeroed` is false (then its bytes hold whatever they
  /// held before), charging `memory` (if given) for its bytes, where `memory` keeps them.
  public init(shape: [Int], memory: DeviceMemory? = nil, zeroed: Bool = true) throws {
    precondition(shape.allSatisfy { $0 >= 0 }, "negative dimension in \(shape)")
    let count = shape.reduce(1, *)
    try memory?.reserve(max(count, 1) * MemoryLayout<Float>.stride)
    let buffers = memory?.buffers
    self.storage = Tensor.allocate(count, zeroed: zeroed, in: buffers)
    self.shape = shape
    self.capacity = count
    self.memory = memory
    self.deviceBuffers = buffers
  }

  /// A parked tensor (`park`): charged to `memory` now, its bytes made (zero) by `unpark`.
  public init(parkedShape shape: [Int], memory: DeviceMemory? = nil) throws {
    precondition(shape.allSatisfy { $0 >= 0 }, "negative dimension in \(shape)")
    let count = shape.reduce(1, *)
    try memory?.reserve(max(count, 1) * MemoryLayout<Float>.stride)
    self.storage = nil
    self.shape = shape
    self.capacity = count
    self.memory = memory
    self.deviceBuffers = memory?.buffers
    self.isParked = true
  }

  /// A tensor holding `values` (copied to the device when `memory` is a device's).
  public convenience init(shape: [Int], values: [Float], memory: DeviceMemory? = nil) throws {
    precondition(shape.reduce(1, *) == values.count, "shape \(shape) does not hold \(values.count) values")
    try self.init(shape: shape, memory: memory, zeroed: false)
    values.withUnsafeBytes { write(from: $0.baseAddress!) }
  }

  deinit {
    if let storage {
      memory?.release(allocatedBytes)
      Tensor.deallocate(storage, count: capacity, in: deviceBuffers)
    } else if isParked {
      memory?.release(allocatedBytes)
    }
  }

  /// Gives the bytes back (to the process's kept pages, or the device plugin) while the charge to
  /// `memory` stays, until `unpark`. For a gradient, whose values live only inside a backward: it
  /// holds no RAM between two backwards, and the next backward on the device (of any model whose
  /// shard has tensors of the same sizes) reuses the same pages. Memory the kernel hands a process
  /// for the first time is zeroed on its first touch, which on the virtual machines measured costs
  /// 0.4-0.6 GB/s a core: a model's first step used to pay it for every gradient of the model.
  public func park() {
    guard let storage else { return }
    Tensor.deallocate(storage, count: capacity, in: deviceBuffers)
    self.storage = nil
    isParked = true
  }

  /// Bytes again for a parked tensor, zero-filled, under the charge `park` kept (no charge, so this
  /// cannot fail for want of room). Nothing for a tensor that is not parked.
  public func unpark() {
    guard isParked else { return }
    storage = Tensor.allocate(capacity, zeroed: true, in: deviceBuffers)
    isParked = false
  }

  /// An evicted tensor charged to `newMemory` again, parked: its bytes come, zero, with `unpark`.
  /// A resident or parked one moves its charge there (`move(to:)`). Throws, changing nothing,
  /// when `newMemory` has no room.
  public func restoreParked(memory newMemory: DeviceMemory?) throws {
    guard storage == nil, !isParked else { return try move(to: newMemory, keepingValues: false) }
    try newMemory?.reserve(allocatedBytes)
    memory = newMemory
    deviceBuffers = newMemory?.buffers
    isParked = true
  }

  /// Moves the charge for this tensor's bytes to `other`; when `other` keeps its bytes elsewhere
  /// (host RAM and a device's memory, say) the bytes are copied there through the plugin and the
  /// old buffer freed; without `keepingValues` (a gradient, whose values do not outlive a task)
  /// they come back zero there instead, and nothing is copied. To nil: the charge alone goes, the
  /// bytes stay where they are. Throws, changing nothing, when `other` has no room.
  public func move(to other: DeviceMemory?, keepingValues: Bool = true) throws {
    guard other !== memory else { return }
    if isParked {
      // No bytes to move: the charge alone, and where the bytes will be made.
      try other?.reserve(allocatedBytes)
      memory?.release(allocatedBytes)
      memory = other
      if let other { deviceBuffers = other.buffers }
      return
    }
    guard let storage, let other, other.buffers !== deviceBuffers else {
      if isResident {
        try other?.reserve(allocatedBytes)
        memory?.release(allocatedBytes)
      }
      memory = other
      return
    }
    try other.reserve(allocatedBytes)
    let target = other.buffers
    let fresh = Tensor.allocate(capacity, zeroed: !keepingValues, in: target)
    if keepingValues { Tensor.transfer(storage, in: deviceBuffers, to: fresh, in: target, byteCount: byteCount) }
    Tensor.deallocate(storage, count: capacity, in: deviceBuffers)
    memory?.release(allocatedBytes)
    self.storage = fresh
    deviceBuffers = target
    memory = other
  }

  /// Writes the bytes to `file` at `offset` (through a host buffer when they are on a device) and
  /// frees them; with no file (a gradient, say, whose contents need not survive, or a state another
  /// process holds) just frees them.
  public func evict(to file: SpillFile?, offset: Int) throws {
    if isParked {
      // A parked tensor's values are zero: a file gets zeros, made for the purpose.
      guard file != nil else {
        isParked = false
        deviceBuffers = nil
        memory?.release(allocatedBytes)
        return
      }
      unpark()
    }
    guard let storage else { return }
    if let file {
      if deviceBuffers == nil {
        try file.transfer(
          UnsafeMutableRawPointer(storage), byteCount, at: offset, reading: false, room: Tensor.hostRoom(capacity))
      } else {
        let staging = UnsafeMutableRawPointer.allocate(byteCount: max(byteCount, 1), alignment: Tensor.alignment)
        defer { staging.deallocate() }
        read(into: staging)
        try file.transfer(staging, byteCount, at: offset, reading: false)
      }
    }
    Tensor.deallocate(storage, count: capacity, in: deviceBuffers)
    self.storage = nil
    deviceBuffers = nil
    memory?.release(allocatedBytes)
  }

  /// Allocates the bytes again, charged to `memory` and where it keeps them, and reads them back
  /// from `file` at `offset` (through a host buffer for a device); with no file they come back zero.
  public func restore(from file: SpillFile?, offset: Int, memory newMemory: DeviceMemory?) throws {
    if isParked {
      guard file != nil else {
        try move(to: newMemory)
        return unpark()
      }
      // Read over whole below: as if evicted.
      isParked = false
      memory?.release(allocatedBytes)
      memory = nil
      deviceBuffers = nil
    }
    guard storage == nil else { return try move(to: newMemory) }
    try newMemory?.reserve(allocatedBytes)
    let target = newMemory?.buffers
    // Every byte is about to be read over when there is a file: no need to zero them first.
    let fresh = Tensor.allocate(capacity, zeroed: file == nil, in: target)
    if let file {
      let staging =
        target == nil
        ? UnsafeMutableRawPointer(fresh)
        : UnsafeMutableRawPointer.allocate(byteCount: max(byteCount, 1), alignment: Tensor.alignment)
      defer { if target != nil { staging.deallocate() } }
      do {
        try file.transfer(
          staging, byteCount, at: offset, reading: true, room: target == nil ? Tensor.hostRoom(capacity) : byteCount)
      } catch {
        Tensor.deallocate(fresh, count: capacity, in: target)
        newMemory?.release(allocatedBytes)
        throw error
      }
      if let target { target.copy(fromHost: staging, toDevice: fresh, byteCount: byteCount) }
    }
    storage = fresh
    deviceBuffers = target
    memory = newMemory
  }

  /// Copies the values (`byteCount` bytes) out to host memory at `host`: through the plugin when
  /// the tensor is on a device.
  public func read(into host: UnsafeMutableRawPointer) {
    Tensor.transfer(data, in: deviceBuffers, to: host, in: nil, byteCount: byteCount)
  }

  /// Overwrites the values with `byteCount` bytes of host memory at `host`: through the plugin when
  /// the tensor is on a device.
  public func write(from host: UnsafeRawPointer) {
    Tensor.transfer(host, in: nil, to: data, in: deviceBuffers, byteCount: byteCount)
  }

  /// This tensor when its bytes are in host RAM, else a copy there (charged nowhere): what a
  /// transport sends.
  public func onHost() throws -> Tensor {
    guard deviceBuffers != nil else { return self }
    let copy = try Tensor(shape: shape)
    read(into: copy.data)
    return copy
  }

  /// Calls `body` with the values in host memory: the bytes themselves in host RAM, or a copy of a
  /// device's (read-only: changes to a copy would be lost).
  public func withHostBuffer<R>(_ body: (UnsafeBufferPointer<Float>) throws -> R) rethrows -> R {
    guard deviceBuffers != nil else { return try body(UnsafeBufferPointer(start: data, count: count)) }
    let staging = UnsafeMutablePointer<Float>.allocate(capacity: max(count, 1))
    defer { staging.deallocate() }
    read(into: staging)
    return try body(UnsafeBufferPointer(start: staging, count: count))
  }

  public var count: Int { shape.reduce(1, *) }
  public var byteCount: Int { count * MemoryLayout<Float>.stride }
  /// The values in place: host RAM only (a tensor on a device has no host address).
  public var buffer: UnsafeMutableBufferPointer<Float> { .init(start: data, count: count) }
  /// A copy of the values, wherever they are.
  public var array: [Float] { withHostBuffer { Array($0) } }

  /// Reinterprets the same buffer with another shape of at most `capacity` elements: lets a block
  /// keep one buffer sized for the largest batch and use a prefix for a smaller one.
  public func reshape(_ newShape: [Int]) {
    precondition(newShape.reduce(1, *) <= capacity, "reshape \(shape) -> \(newShape) exceeds capacity")
    shape = newShape
  }

  /// One value in place: host RAM only.
  public subscript(i: Int) -> Float {
    get { data[i] }
    set { data[i] = newValue }
  }

  /// Copies the values of `other`, wherever each is.
  public func copy(from other: Tensor) {
    precondition(other.count == count, "copy \(other.shape) into \(shape)")
    Tensor.transfer(other.data, in: other.deviceBuffers, to: data, in: deviceBuffers, byteCount: byteCount)
  }

  /// Host RAM only: a device's tensor is zeroed by its kernels (`fill`).
  public func zero() { data.update(repeating: 0, count: count) }

  /// True when both hold the same bits (NaNs included): the exactness invariant compares this way.
  public func bitwiseEqual(_ other: Tensor) -> Bool {
    guard shape == other.shape else { return false }
    return withHostBuffer { a in other.withHostBuffer { b in memcmp(a.baseAddress!, b.baseAddress!, byteCount) == 0 } }
  }
}

/// The host RAM of tensors of `Tensor.mappedBytes` and more: pages mapped from the kernel, kept
/// mapped when a tensor is freed and handed to the next tensor of the same size (rounded to pages).
///
/// A shard task frees its buffers when it ends, and the next task asks for buffers of the same
/// sizes. Unmapping them and mapping them again cost a page fault per 4 KiB on every task: 1.6
/// million faults, 4.4 s of system time, in a 6.2 s run of the 8-model benchmark.
///
/// The bound: the bytes kept for reuse plus the bytes of live tensors never exceed the most bytes
/// of live tensors the process has held at once. The process never holds more of these pages
/// than it needed at its busiest moment, so the budgets that bound the live tensors bound it too.
/// A buffer asked for when the bound is reached takes the room of kept ones, which are unmapped.
public final class MappedBuffers: @unchecked Sendable {
  public static let shared = MappedBuffers()

  public struct Statistics: Sendable, Equatable {
    /// Buffers handed out from kept pages, and mapped afresh.
    public var reused = 0
    public var mapped = 0
    /// Bytes of the buffers mapped afresh (each page of them faulted in once more).
    public var mappedBytes = 0
    /// Bytes of live tensors, of kept pages, and the most live bytes at once.
    public var liveBytes = 0
    public var keptBytes = 0
    public var peakLiveBytes = 0
  }

  private let lock = NSLock()
  private var kept: [Int: [UnsafeMutableRawPointer]] = [:]
  private var stats = Statistics()
  /// mremap's MREMAP_MAYMOVE.
  static let mayMove: Int32 = 1
  /// MADV_POPULATE_WRITE, which Glibc's headers of some systems do not name.
  static let populateWrite: Int32 = 23
  private static let page = max(Int(sysconf(Int32(_SC_PAGESIZE))), 4096)

  init() {}

  public var statistics: Statistics {
    lock.lock()
    defer { lock.unlock() }
    return stats
  }

  static func rounded(_ bytes: Int) -> Int { (bytes + page - 1) / page * page }

  /// Under the lock: a kept buffer of `size` bytes out of `kept` (still counted in `keptBytes`).
  private func popKept(_ size: Int) -> UnsafeMutableRawPointer? {
    guard let p = kept[size]?.popLast() else { return nil }
    if kept[size]!.isEmpty { kept[size] = nil }
    return p
  }

  /// `bytes` of host RAM, page aligned; zero-filled when `zeroed`.
  func take(_ bytes: Int, zeroed: Bool) -> UnsafeMutableRawPointer {
    let size = MappedBuffers.rounded(bytes)
    var unmap: [(UnsafeMutableRawPointer, Int)] = []
    lock.lock()
    // A kept buffer of this size; else the head of the smallest larger one, whose tail stays kept
    // as a buffer of its own (any page range of an anonymous mapping can be unmapped alone). Kept
    // pages were faulted in already; a buffer mapped afresh instead costs a fault per page again,
    // and on the virtual machines measured the first touch of memory is slow (0.4-0.6 GB/s a
    // core): on a GPT-2-small sweep a third of the bytes mapped were sizes that no kept buffer
    // matched.
    var reused = popKept(size)
    if reused == nil, let larger = kept.keys.filter({ $0 > size }).min() {
      let p = popKept(larger)!
      kept[larger - size, default: []].append(p + size)
      reused = p
    }
    if let p = reused {
      stats.keptBytes -= size
      stats.liveBytes += size
      stats.reused += 1
      lock.unlock()
      if zeroed { memset(p, 0, bytes) }
      return p
    }
    // Only smaller ones: the largest grows in place or moves (mremap carries its pages), and
    // only the rest is new.
    var grown: (UnsafeMutableRawPointer, Int)?
    if let smaller = kept.keys.max() {
      stats.keptBytes -= smaller
      grown = (popKept(smaller)!, smaller)
    }
    let carried = grown?.1 ?? 0
    // Room under the bound, from the largest kept buffers first.
    while stats.liveBytes + stats.keptBytes + size > stats.peakLiveBytes, let largest = kept.keys.max() {
      stats.keptBytes -= largest
      unmap.append((popKept(largest)!, largest))
    }
    stats.liveBytes += size
    stats.peakLiveBytes = max(stats.peakLiveBytes, stats.liveBytes)
    stats.mapped += 1
    stats.mappedBytes += size - carried
    if carried > 0 { stats.reused += 1 }
    lock.unlock()
    for (p, n) in unmap { munmap(p, n) }
    var p: UnsafeMutableRawPointer
    if let (old, oldSize) = grown, let moved = hydra_mremap(old, oldSize, size, MappedBuffers.mayMove), moved != MAP_FAILED {
      p = moved
      if zeroed { memset(p, 0, oldSize) }  // the rest is new, zero already
    } else {
      if let (old, oldSize) = grown { munmap(old, oldSize) }
      // Fresh pages are zero already.
      guard let fresh = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), fresh != MAP_FAILED
      else {
        fatalError("out of memory: cannot map \(size) bytes for a tensor (\(String(cString: strerror(errno))))")
      }
      p = fresh
      if carried > 0 {
        lock.lock()
        stats.mappedBytes += carried
        lock.unlock()
      }
    }
    // Fault every page in now, in one call (MADV_POPULATE_WRITE, Linux 5.14; older kernels refuse
    // it and the pages fault in on first touch as before). Page by page, a first write costs a
    // fault each, and a first read maps the shared zero page, so the write after it (AdamW's
    // moments) faults again and flushes the other cores' TLBs. Measured on a GPT-2-small sweep: a
    // model's first step took 3x a later one, and 24 s of device time went to faults.
    // Inside `deferringPopulation` on this thread, the pages are faulted in later, on every core.
    lock.lock()
    if deferred[pthread_self()] != nil {
      deferred[pthread_self()]!.append((p, size))
      lock.unlock()
    } else {
      lock.unlock()
      _ = madvise(p, size, MappedBuffers.populateWrite)
    }
    return p
  }

  /// The buffers mapped by each thread inside `deferringPopulation`, to be faulted in.
  private var deferred: [pthread_t: [(UnsafeMutableRawPointer, Int)]] = [:]

  /// Runs `body` (which makes tensors on this thread), then faults in the pages of every buffer it
  /// mapped afresh, in pieces on every core at once. A model's state is gigabytes of fresh pages
  /// (the kernel zeroes each on its first touch: on a GPT-2-small sweep 38 % of the start-up's
  /// CPU); faulted in by the thread that maps them, one core does it all while the others wait, and
  /// faulting in while another thread maps (which takes the address space's lock to write) stalls
  /// both. Several threads may each run one at once (ranks as threads); not reentrant.
  public func deferringPopulation<T>(_ body: () throws -> T) rethrows -> T {
    lock.lock()
    precondition(deferred[pthread_self()] == nil, "deferringPopulation is not reentrant")
    deferred[pthread_self()] = []
    lock.unlock()
    let result: T
    do {
      result = try body()
    } catch {
      populateDeferred()
      throw error
    }
    populateDeferred()
    return result
  }

  /// Bytes faulted in by one piece of work of `deferringPopulation`.
  static let populatePiece = 4 << 20

  private func populateDeferred() {
    lock.lock()
    let ranges = deferred.removeValue(forKey: pthread_self()) ?? []
    lock.unlock()
    var pieces: [(UnsafeMutableRawPointer, Int)] = []
    for (p, size) in ranges {
      var offset = 0
      while offset < size {
        let n = min(MappedBuffers.populatePiece, size - offset)
        pieces.append((p + offset, n))
        offset += n
      }
    }
    pieces.withUnsafeBufferPointer { all in
      DispatchQueue.concurrentPerform(iterations: all.count) { i in
        _ = madvise(all[i].0, all[i].1, MappedBuffers.populateWrite)
      }
    }
  }

  /// Takes back a buffer `take(bytes, ...)` handed out: kept for the next tensor of its size.
  func give(_ p: UnsafeMutableRawPointer, _ bytes: Int) {
    let size = MappedBuffers.rounded(bytes)
    lock.lock()
    // live + kept stays what it was, at most the peak: always room to keep it.
    stats.liveBytes -= size
    stats.keptBytes += size
    kept[size, default: []].append(p)
    lock.unlock()
  }

  /// Unmaps every kept buffer (a process that is done with its tensors, or a test).
  public func trim() {
    lock.lock()
    let all = kept.flatMap { size, list in list.map { ($0, size) } }
    kept = [:]
    stats.keptBytes = 0
    stats.peakLiveBytes = stats.liveBytes
    lock.unlock()
    for (p, n) in all { munmap(p, n) }
  }
}

/// An open file that tensors leave RAM for and come back from (a host store's spill file). Owns its
/// descriptor, which closes when the last reference goes; nothing else sees it.
public final class SpillFile: @unchecked Sendable {
  public let path: String
  private let descriptor: Int32
  /// The same file opened past the page cache (O_DIRECT), or -1 where the file system refuses.
  /// Spilled state is written once and read back once: through the page cache both copy every
  /// byte, into freshly allocated cache pages on the way out (14 % of the CPU of a GPT-2-small
  /// sweep that spilled to disk).
  private let direct: Int32

  /// Direct I/O moves whole aligned blocks from aligned addresses: 4 KiB serves 512-byte and
  /// 4 KiB devices alike.
  public static let alignment = 4096
  /// Linux's O_DIRECT, which Swift's Glibc module leaves out.
  #if arch(arm64) || arch(arm)
    static let oDirect: Int32 = 0o200000
  #else
    static let oDirect: Int32 = 0o40000
  #endif

  /// The bytes a tensor of `bytes` takes in a spill file: each starts on an aligned offset, so
  /// that a page-aligned buffer moves by direct I/O.
  public static func slot(_ bytes: Int) -> Int { (bytes + alignment - 1) / alignment * alignment }

  /// Opens `path` for reading, or for reading and writing (`create`: made if missing).
  public init(path: String, writable: Bool, create: Bool = false) throws {
    self.path = path
    let flags = (writable ? O_RDWR : O_RDONLY) | (create ? O_CREAT : 0) | O_CLOEXEC
    descriptor = open(path, flags, 0o644)
    guard descriptor >= 0 else {
      throw TensorIOError(message: "cannot open \(path): \(String(cString: strerror(errno)))")
    }
    direct = open(path, (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC | SpillFile.oDirect)
  }

  deinit {
    close(descriptor)
    if direct >= 0 { close(direct) }
  }

  /// Cuts the file to `length` bytes (a direct write moves whole slots, so the last one may
  /// reach past the bytes meant) and makes it durable.
  public func finish(length: Int) throws {
    guard ftruncate(descriptor, off_t(length)) == 0 else {
      throw TensorIOError(message: "\(path): cannot set the length: \(String(cString: strerror(errno)))")
    }
    guard fsync(descriptor) == 0 else {
      throw TensorIOError(message: "\(path): fsync failed: \(String(cString: strerror(errno)))")
    }
  }

  /// Reads (`reading`) or writes `count` bytes at `base` from or to `offset` of the file, whole.
  /// `room`: the bytes at `base` that may be moved (at least `count`); where it covers the
  /// aligned slot and `base` and `offset` are aligned, the slot moves whole past the page cache.
  public func transfer(
    _ base: UnsafeMutableRawPointer, _ count: Int, at offset: Int, reading: Bool, room: Int = 0
  ) throws {
    let a = SpillFile.alignment
    let slot = SpillFile.slot(count)
    let viaDirect = direct >= 0 && count > 0 && room >= slot && Int(bitPattern: base) % a == 0 && offset % a == 0
    var fd = viaDirect ? direct : descriptor
    var total = viaDirect ? slot : count
    var done = 0
    while done < count {
      let n =
        reading
        ? pread(fd, base + done, total - done, off_t(offset + done))
        : pwrite(fd, base + done, total - done, off_t(offset + done))
      if n < 0 && errno == EINTR { continue }
      if n < 0 && errno == EINVAL && fd == direct {
        // Refused past the page cache after all (a short transfer left the rest unaligned).
        fd = descriptor
        total = count
        continue
      }
      guard n > 0 else {
        throw TensorIOError(
          message:
            "\(path): \(reading ? "reading" : "writing") \(count) bytes at offset \(offset): \(n == 0 ? "unexpected end of file" : String(cString: strerror(errno)))"
        )
      }
      done += n
    }
  }
}

public struct TensorIOError: Error, CustomStringConvertible {
  public let message: String
  public var description: String { "spill file: \(message)" }
}

/// Int32 indices (tokens, class labels) in a plain array; they are small and never spilled alone.
public typealias Indices = [Int32]
