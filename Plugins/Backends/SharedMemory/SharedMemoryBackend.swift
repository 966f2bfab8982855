import Foundation
import HydraPluginAPI

/// `shm`: every device is a thread of this process and every tensor is in its memory, so a
/// transfer is a reference handed over, never a copy. The embedded default: no MPI launcher.
public final class SharedMemoryBackend: Backend, @unchecked Sendable {
  public let name = "shm"
  public let tensorsStayInProcess = true
  public let deviceCount: Int
  private let queues: [DispatchQueue]
  private let lock = NSLock()
  private var posted: [TransferKey: Tensor] = [:]

  public init(devices: Int) {
    precondition(devices >= 1)
    deviceCount = devices
    queues = (0..<devices).map { DispatchQueue(label: "hydra.shm.device.\($0)") }
  }

  public func execute(on device: Int, _ work: @escaping () -> Void) {
    // The runtime gives a model to one device at a time: the work's captures are that device's.
    let task = UncheckedWork(run: work)
    queues[device].async { task.run() }
  }

  public func post(_ tensor: Tensor, key: TransferKey, from device: Int, for consumer: Int) throws {
    lock.lock()
    defer { lock.unlock() }
    posted[key] = tensor
  }

  public func fetch(_ key: TransferKey, to device: Int) throws -> Tensor {
    lock.lock()
    defer { lock.unlock() }
    guard let t = posted[key] else { throw RuntimeError("shm: nothing was posted as \(key)") }
    return t
  }

  public func discard(_ key: TransferKey) {
    lock.lock()
    posted[key] = nil
    lock.unlock()
  }

  /// Tensors posted and not yet discarded (a finished job leaves none).
  public var outstanding: Int {
    lock.lock()
    defer { lock.unlock() }
    return posted.count
  }
}

private struct UncheckedWork: @unchecked Sendable {
  let run: () -> Void
}
