import Foundation
import HydraPluginAPI

/// A file written front to back without the page cache where the file system allows it: bytes go
/// through one aligned staging buffer, and each full buffer moves by `SpillFile.transfer`, whose
/// direct descriptor takes aligned buffers past the page cache (and whose buffered one takes the
/// rest, or everything where `O_DIRECT` is refused: tmpfs, some network file systems).
///
/// Why: writing a checkpoint through the page cache copies every byte into freshly allocated
/// cache pages (`copy_folio_from_iter`), and on a virtual machine the first touch of those pages
/// is most of the cost: four GPT-2-small checkpoints (6 GB) spent about 17 s of CPU there, 350
/// MB/s, against a memcpy into the reused staging buffer at several GB/s.
///
/// The last block may go out whole past the bytes put; `finish` cuts the file to its length, so
/// the file holds exactly the bytes put, in order.
final class DirectFile {
  let path: String
  private var file: SpillFile?
  private let buffer: UnsafeMutableRawPointer
  private var filled = 0
  /// Bytes put so far (the file's length once finished), and bytes of them on the disk.
  private(set) var length = 0
  private var written = 0

  /// Large enough that a write's fixed cost is small against its bytes; a multiple of
  /// `SpillFile.alignment`, so that every write but the last starts aligned.
  static let chunk = 8 << 20

  /// Creates `path`, which must not exist. Throws `WriteError` naming the file.
  init(path: String) throws {
    self.path = path
    let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
    guard fd >= 0 else { throw WriteError(file: path, "cannot create: \(String(cString: strerror(errno)))") }
    close(fd)
    var p: UnsafeMutableRawPointer?
    guard posix_memalign(&p, SpillFile.alignment, DirectFile.chunk) == 0, let p else {
      unlink(path)
      throw WriteError(file: path, "cannot allocate a \(DirectFile.chunk)-byte write buffer")
    }
    buffer = p
    do {
      file = try SpillFile(path: path, writable: true)
    } catch {
      buffer.deallocate()
      unlink(path)
      throw WriteError(file: path, "\(error)")
    }
  }

  deinit { buffer.deallocate() }

  /// Appends `bytes`.
  func put(_ bytes: UnsafeRawBufferPointer) throws {
    guard var source = bytes.baseAddress else { return }
    var left = bytes.count
    while left > 0 {
      let n = min(left, DirectFile.chunk - filled)
      memcpy(buffer + filled, source, n)
      filled += n
      left -= n
      source += n
      length += n
      if filled == DirectFile.chunk { try flush() }
    }
  }

  /// Writes the staged bytes; the whole buffer is room, so a tail moves as one aligned slot.
  private func flush() throws {
    guard let file else { throw WriteError(file: path, "written after it was finished") }
    do {
      try file.transfer(buffer, filled, at: written, reading: false, room: DirectFile.chunk)
    } catch let e as TensorIOError {
      throw WriteError(file: path, unprefixed(e.message))
    }
    written += filled
    filled = 0
  }

  /// Writes what is staged, cuts the file to the bytes put, fsyncs and closes it.
  func finish() throws {
    if filled > 0 { try flush() }
    guard let file else { throw WriteError(file: path, "finished twice") }
    do {
      try file.finish(length: length)
    } catch let e as TensorIOError {
      throw WriteError(file: path, unprefixed(e.message))
    }
    self.file = nil  // closes it
  }

  /// The transfer's message names the file itself; the error names it once.
  private func unprefixed(_ message: String) -> String {
    message.hasPrefix(path + ": ") ? String(message.dropFirst(path.count + 2)) : message
  }
}
