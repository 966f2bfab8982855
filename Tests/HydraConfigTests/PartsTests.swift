import XCTest

@testable import HydraConfig

final class PartsTests: XCTestCase {
  func testSizes() throws {
    let good: [(String, Int)] = [
      ("12GiB", 12 << 30), ("12 GiB", 12 << 30), ("512MiB", 512 << 20), ("64KiB", 64 << 10), ("1.5GiB", 3 << 29),
      ("2TiB", 2 << 40), ("12GB", 12_000_000_000), ("12 GB", 12_000_000_000), ("500MB", 500_000_000),
      ("64kB", 64_000), ("64KB", 64_000), ("1TB", 1_000_000_000_000), ("100B", 100), ("4096", 4096),
      (" 1 MiB ", 1 << 20),
    ]
    for (text, bytes) in good {
      guard case .success(let n) = parseSize(text) else { return XCTFail(text) }
      XCTAssertEqual(n, bytes, text)
    }
    for text in [
      "12 G", "12gb", "12 gib", "abc", "12 GiBs", "-1GiB", "0", "0.1B", "", "GiB", "1.GiB", "99999999999TiB",
    ] {
      guard case .failure = parseSize(text) else { return XCTFail("accepted \(text)") }
    }
  }

  func testSourceMapFindsKeys() {
    let text = """
      top = 1
      [job]
      name = "x"
      [sweep]
      "train.lr" = [1,
        2]
      model.d_model = [64]
      s = \"\"\"
      fake = 1
      \"\"\"
      [[models]]
      "train.lr" = 1
      [[models]]
      model = { heads = 2 }
      [models.train]
      steps = 3
      """
    let m = SourceMap(source: text)
    XCTAssertEqual(m.line(table: "", key: "top"), 1)
    XCTAssertEqual(m.line(table: "job", key: "name"), 3)
    XCTAssertEqual(m.line(table: "job", key: "seed"), 2)
    XCTAssertEqual(m.line(table: "sweep", key: "train.lr"), 5)
    XCTAssertEqual(m.line(table: "sweep", key: "model.d_model"), 7)
    XCTAssertEqual(m.line(table: "sweep", key: "fake"), 4)
    XCTAssertEqual(m.line(table: "models", index: 0, key: "train.lr"), 12)
    XCTAssertEqual(m.line(table: "models", index: 1, key: "model.heads"), 14)
    XCTAssertEqual(m.line(table: "models", index: 1, key: "train.steps"), 16)
    XCTAssertEqual(m.line(table: "models", index: 1, key: "train.lr"), 15)
    XCTAssertEqual(m.headerLine(table: "models", index: 1), 13)
    XCTAssertNil(m.line(table: "data", key: "path"))
  }

  func testConfigValueIsTOML() {
    XCTAssertEqual(
      ConfigValue.array([.int(1), .double(1e-8), .string("a\"b\n"), .bool(true)]).description,
      "[1, 1e-08, \"a\\\"b\\n\", true]")
    XCTAssertEqual(memberID(7), "m007")
    XCTAssertEqual(TrainSection(steps: 5).lr, 1e-3)
    XCTAssertEqual(ModelSection(kind: .gpt).dModel, 128)
    XCTAssertEqual(memberID(1234), "m1234")
    XCTAssertEqual(ConfigError(file: "/a/job.toml", line: 3, message: "bad").description, "/a/job.toml:3: bad")
    XCTAssertEqual(ConfigError(file: "/a/job.toml", line: nil, message: "bad").description, "/a/job.toml: bad")
  }
}
