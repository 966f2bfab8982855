import Foundation
import XCTest

/// `activation_checkpointing = "auto"` model by model, read from `validate` as a user sees it:
/// with a store that holds everything no model recomputes; with one that holds only the states
/// every model does; in between, the models that keep their activations are the first ones in job
/// order, and more RAM never makes a model recompute that kept its activations with less.
final class AutoCheckpointingTests: XCTestCase {
  func choices(hostMemory: String) throws -> [Bool] {
    let dir = try temporaryFolder()
    let data = dir + "/text.txt"
    try String(repeating: "kept or recomputed, the bytes are the same. ", count: 40).write(
      toFile: data, atomically: true, encoding: .utf8)
    let job = try writeJob(
      dir,
      """
      [job]
      name = "auto"
      output = "out"
      [cluster]
      devices = 2
      device_memory = "32MiB"
      host_memory = "\(hostMemory)"
      [data]
      format = "text"
      path = "\(data)"
      [model]
      kind = "gpt"
      layers = 4
      d_model = 64
      heads = 4
      context = 64
      [train]
      steps = 1
      batch_size = 16
      [sweep]
      "train.lr" = [1e-4, 2e-4, 3e-4, 4e-4, 5e-4, 6e-4, 7e-4, 8e-4]
      """)
    let r = try runTool(["validate", job])
    XCTAssertEqual(r.status, 0, r.err)
    let lines = r.out.split(separator: "\n").filter { $0.contains("activation checkpointing") }
    XCTAssertEqual(lines.count, 8, r.out)
    return lines.map { $0.contains("activation checkpointing on") }
  }

  func testModelsKeepActivationsInJobOrderWhileTheyFit() throws {
    XCTAssertEqual(try choices(hostMemory: "1GiB"), Array(repeating: false, count: 8))
    // 8 models of about 215k parameters (16 bytes each with gradients: 3.6 MiB, `validate`'s
    // block states) and 17.5 MiB of kept activations each at batch 16: 8 x 17.5 = 140 MiB will not
    // fit 3 MiB of RAM, nor do the 8 states alone (8 x 2.7 MiB without gradients) with what two
    // 32 MiB devices leave beside their 15 MiB shards: every model recomputes.
    XCTAssertEqual(try choices(hostMemory: "3MiB"), Array(repeating: true, count: 8))
    var keptBefore = 0
    var sawMixed = false
    for mib in stride(from: 32, through: 192, by: 16) {
      let c = try choices(hostMemory: "\(mib)MiB")
      let kept = c.prefix { !$0 }.count
      XCTAssertEqual(Array(c[kept...]), Array(repeating: true, count: 8 - kept), "\(mib) MiB: \(c)")
      XCTAssertGreaterThanOrEqual(kept, keptBefore, "\(mib) MiB")
      if kept > 0 && kept < 8 { sawMixed = true }
      keptBefore = kept
    }
    XCTAssertTrue(sawMixed, "no host_memory between 32 and 192 MiB gave a mix")
  }
}
