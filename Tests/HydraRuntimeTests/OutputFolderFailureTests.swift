import Foundation
import HydraConfig
import XCTest

@testable import HydraBuiltins
@testable import HydraRuntime

/// Output folders that cannot be used: refused with exit 2 (InputError) and a sentence naming the
/// user's path, or, for a disk that fills during the run, exit 1 naming the file and what to do; and
/// nothing already in the folder damaged.
final class OutputFolderFailureTests: XCTestCase {
  private func run(_ dir: String, output: String) throws {
    let path = try PlanTests.job(dir)
    let registry = try Builtins.registry()
    let config = try JobConfig.load(
      path: path, known: Builtins.known(registry), overrides: ["job.output=\"\(output)\""])
    let runner = JobRunner(config: config, registry: registry)
    runner.log = { _ in }
    _ = try runner.run()
  }

  private func assertRefused(
    _ dir: String, output: String, _ words: [String], file: StaticString = #filePath, line: UInt = #line
  ) {
    XCTAssertThrowsError(try run(dir, output: output), file: file, line: line) { error in
      XCTAssert(error is InputError, "\(type(of: error)): \(error)", file: file, line: line)
      let text = "\(error)"
      XCTAssertFalse(text.contains("NSCocoaErrorDomain"), text, file: file, line: line)
      for w in [output] + words { XCTAssert(text.contains(w), "\(text) lacks \(w)", file: file, line: line) }
    }
  }

  func testAPathThroughAFileIsNamed() throws {
    let dir = try temporaryFolder()
    let file = dir + "/results"
    try Data("the user's notes\n".utf8).write(to: URL(fileURLWithPath: file))
    assertRefused(dir, output: file, ["\(file) is a file, not a folder"])
    assertRefused(dir, output: file + "/sweep", ["\(file) is a file, not a folder"])
    XCTAssertEqual(try String(contentsOfFile: file, encoding: .utf8), "the user's notes\n")
  }

  /// A small tmpfs of the test's own (root only): read-only, then full.
  private func mount(_ options: String) throws -> String {
    guard getuid() == 0 else { throw XCTSkip("mounting a test file system needs root") }
    let point = try temporaryFolder() + "/fs"
    try FileManager.default.createDirectory(atPath: point, withIntermediateDirectories: true)
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/bin/mount")
    p.arguments = ["-t", "tmpfs", "-o", options, "tmpfs", point]
    p.standardError = FileHandle.nullDevice
    try p.run()
    p.waitUntilExit()
    guard p.terminationStatus == 0 else { throw XCTSkip("mount -t tmpfs failed here (a container without CAP_SYS_ADMIN)") }
    addTeardownBlock {
      let u = Process()
      u.executableURL = URL(fileURLWithPath: "/bin/umount")
      u.arguments = ["-l", point]
      try? u.run()
      u.waitUntilExit()
    }
    return point
  }

  func testAReadOnlyFileSystemIsNamed() throws {
    let point = try mount("ro,size=1m")
    assertRefused(try temporaryFolder(), output: point + "/out", ["read-only file system"])
  }

  func testAFullDiskNamesTheFileAndWhatToDo() throws {
    // 64 KiB: the folder, job.toml and metrics.csv fit; the first checkpoint does not.
    let point = try mount("size=64k")
    let dir = try temporaryFolder()
    XCTAssertThrowsError(try run(dir, output: point + "/out")) { error in
      let text = "\(error)"
      XCTAssertFalse(error is InputError, text)
      XCTAssert(text.contains(point + "/out/checkpoints/"), text)
      XCTAssert(text.contains("is full"), text)
      XCTAssert(text.contains("--resume"), text)
    }
    // No half-written unit is left behind.
    let checkpoints = point + "/out/checkpoints"
    for model in (try? FileManager.default.contentsOfDirectory(atPath: checkpoints)) ?? [] {
      let entries = try FileManager.default.contentsOfDirectory(atPath: checkpoints + "/" + model)
      XCTAssertFalse(entries.contains { $0.hasPrefix(".tmp-") }, "\(model): \(entries)")
    }
  }
}
