import Foundation
import XCTest

/// The repository's root, from this file's path.
let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
  .deletingLastPathComponent().path
let headerFolder = repositoryRoot + "/Sources/CHydraPlugin/include"

/// A folder of its own under the temporary directory, removed when the test ends.
func temporaryFolder(_ test: XCTestCase) throws -> String {
  let folder = NSTemporaryDirectory() + "hydra-plugin-tests-\(getpid())-\(UUID().uuidString.prefix(8))"
  try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
  test.addTeardownBlock { try? FileManager.default.removeItem(atPath: folder) }
  return folder
}

/// Compiles C `sources` (files relative to the repository, or text) into a shared library in `folder`, as
/// a user would: `cc -shared -fPIC` against the header alone, `flags` last.
func buildLibrary(
  _ name: String, source: String? = nil, file: String? = nil, flags: [String] = [], in folder: String
) throws -> String {
  let input: String
  if let file {
    input = repositoryRoot + "/" + file
  } else {
    input = folder + "/\(name).c"
    try source!.write(toFile: input, atomically: true, encoding: .utf8)
  }
  let output = folder + "/lib\(name).so"
  let cc = Process()
  cc.executableURL = URL(fileURLWithPath: "/usr/bin/env")
  cc.arguments = ["cc", "-std=c11", "-O2", "-shared", "-fPIC", "-I", headerFolder, "-o", output, input] + flags
  try cc.run()
  cc.waitUntilExit()
  guard cc.terminationStatus == 0 else { throw NSError(domain: "cc failed for \(input)", code: 1) }
  return output
}
