import Foundation
import HydraPluginAPI

/// The memory of one `discrete` device: a region of address space that the host cannot read or
/// write outside the plugin's own calls. Between calls every page is `PROT_NONE`, so a direct
/// access by the runtime (a dereference of `Tensor.data`, a `memcpy` from it) is a SIGSEGV, as a
/// host access to a GPU's memory would be an error; inside a call (a kernel, a copy) the pages in
/// use are readable and writable. Calls may overlap (a device's task and a prefetch onto the same
/// device): the region stays open while any is inside.
///
/// Buffers are whole pages, taken from the top of the region or from the free buffers of the same
/// size (training allocates the same shapes every step, so the region stops growing after the
/// first). Copies are counted each way.
public final class DiscreteArena: DeviceBuffers, @unchecked Sendable {
  public let label: String
  private let base: UnsafeMutableRawPointer
  private let reserved: Int
  private let page = Int(sysconf(Int32(_SC_PAGESIZE)))
  private let lock = NSLock()
  /// Bytes of the region handed out so far (buffers in use or freed), from `base`.
  private var top = 0
  /// Free buffers by size in bytes (a multiple of the page): their offsets from `base`.
  private var free: [Int: [Int]] = [:]
  /// Calls inside the region now; while any, `[base, base + openTop)` is readable and writable.
  private var callsInside = 0
  private var openTop = 0
  private let counter = DeviceTrafficCounter()

  /// Address space reserved per device (never committed until used).
  public static let reservedBytes = 1 << 40

  public init(label: String) {
    self.label = label
    reserved = Self.reservedBytes
    guard
      let p = mmap(nil, reserved, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0),
      p != MAP_FAILED
    else { fatalError("discrete \(label): cannot reserve address space (\(String(cString: strerror(errno))))") }
    base = p
  }

  deinit { munmap(base, reserved) }

  /// Whether `pointer` is in this device's memory.
  public func contains(_ pointer: UnsafeRawPointer) -> Bool {
    pointer >= UnsafeRawPointer(base) && pointer < UnsafeRawPointer(base + reserved)
  }

  /// Opens the region for a call of the plugin (`leave` closes it again).
  public func enter() {
    lock.lock()
    if callsInside == 0 { protect(0, top, open: true) }
    callsInside += 1
    lock.unlock()
  }

  public func leave() {
    lock.lock()
    callsInside -= 1
    if callsInside == 0 { protect(0, openTop, open: false) }
    lock.unlock()
  }

  /// Runs `body` with the region open.
  @inline(__always)
  public func whileOpen<R>(_ body: () throws -> R) rethrows -> R {
    enter()
    defer { leave() }
    return try body()
  }

  /// Under the lock.
  private func protect(_ from: Int, _ to: Int, open: Bool) {
    if open { openTop = to }
    guard to > from else { return }
    if mprotect(base + from, to - from, open ? PROT_READ | PROT_WRITE : PROT_NONE) != 0 {
      fatalError("discrete \(label): mprotect failed (\(String(cString: strerror(errno))))")
    }
  }

  public func allocate(byteCount: Int, zeroed: Bool) -> UnsafeMutableRawPointer {
    let size = (max(byteCount, 1) + page - 1) / page * page
    lock.lock()
    let offset: Int
    if let reused = free[size]?.popLast() {
      offset = reused
    } else {
      guard top + size <= reserved else {
        fatalError("discrete \(label): \(formatBytes(reserved)) of address space used up")
      }
      offset = top
      top += size
      // Grown while open: the new pages must be usable at once.
      if callsInside > 0 { protect(openTop, top, open: true) }
    }
    lock.unlock()
    let p = base + offset
    // Memory asked for without clearing holds NaNs (all bits set) here: a block or the runtime that
    // reads such a buffer before writing it spoils the tests' bytes on this test device.
    whileOpen { _ = memset(p, zeroed ? 0 : 0xFF, size) }
    return p
  }

  public func deallocate(_ buffer: UnsafeMutableRawPointer, byteCount: Int) {
    precondition(contains(buffer), "discrete \(label): freeing memory that is not this device's")
    let size = (max(byteCount, 1) + page - 1) / page * page
    lock.lock()
    free[size, default: []].append(buffer - base)
    lock.unlock()
  }

  public func copy(fromHost source: UnsafeRawPointer, toDevice destination: UnsafeMutableRawPointer, byteCount: Int) {
    precondition(contains(destination) && !contains(source), "discrete \(label): not a host -> device copy")
    whileOpen { destination.copyMemory(from: source, byteCount: byteCount) }
    counter.record(.hostToDevice, byteCount: byteCount)
  }

  public func copy(fromDevice source: UnsafeRawPointer, toHost destination: UnsafeMutableRawPointer, byteCount: Int) {
    precondition(contains(source) && !contains(destination), "discrete \(label): not a device -> host copy")
    whileOpen { destination.copyMemory(from: source, byteCount: byteCount) }
    counter.record(.deviceToHost, byteCount: byteCount)
  }

  public func copy(onDevice source: UnsafeRawPointer, to destination: UnsafeMutableRawPointer, byteCount: Int) {
    precondition(contains(source) && contains(destination), "discrete \(label): not a device -> device copy")
    whileOpen { destination.copyMemory(from: source, byteCount: byteCount) }
    counter.record(.deviceToDevice, byteCount: byteCount)
  }

  /// Every call is synchronous: nothing to wait for.
  public func synchronize() {}

  public var traffic: DeviceTraffic { counter.traffic }
}
