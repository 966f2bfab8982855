import CZlib
import Foundation
import XCTest

@testable import HydraCore

final class DataTests: XCTestCase {
  // MARK: helpers

  /// The repository root: three levels up from this file (Tests/HydraCoreTests/DataTests.swift).
  static let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .deletingLastPathComponent().deletingLastPathComponent()
  static let digitsPath = repoRoot.appendingPathComponent("Examples/data/digits.csv.gz").path
  static let fortunesPath = repoRoot.appendingPathComponent("Examples/data/fortunes.txt").path

  private var tempDir: URL!

  override func setUpWithError() throws {
    tempDir = FileManager.default.temporaryDirectory
      .appendingPathComponent("hydra-data-tests-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: tempDir, withIntermediateDirectories: true)
  }

  override func tearDownWithError() throws {
    try? FileManager.default.removeItem(at: tempDir)
  }

  @discardableResult
  private func write(_ name: String, _ bytes: [UInt8]) throws -> String {
    let url = tempDir.appendingPathComponent(name)
    try Data(bytes).write(to: url)
    return url.path
  }

  private func write(_ name: String, _ text: String) throws -> String {
    try write(name, Array(text.utf8))
  }

  /// Writes `bytes` gzip-compressed with zlib.
  private func writeGzip(_ name: String, _ bytes: [UInt8]) throws -> String {
    let path = tempDir.appendingPathComponent(name).path
    let file = try XCTUnwrap(gzopen(path, "wb"))
    let written = bytes.withUnsafeBytes { gzwrite(file, $0.baseAddress, UInt32($0.count)) }
    XCTAssertEqual(Int(written), bytes.count)
    XCTAssertEqual(gzclose(file), Z_OK)
    return path
  }

  private func uint16LE(_ values: [UInt16]) -> [UInt8] {
    values.flatMap { [UInt8($0 & 0xFF), UInt8($0 >> 8)] }
  }

  /// Asserts that loading throws an InputError whose description contains every fragment.
  private func assertInputError(
    _ spec: DataSpec, _ fragments: [String], file: StaticString = #filePath, line: UInt = #line
  ) {
    do {
      _ = try Dataset.load(spec)
      XCTFail("no error for \(spec.path)", file: file, line: line)
    } catch let error as InputError {
      for fragment in fragments {
        XCTAssertTrue(
          error.description.contains(fragment), "\"\(error.description)\" lacks \"\(fragment)\"",
          file: file, line: line)
      }
    } catch {
      XCTFail("not an InputError: \(error)", file: file, line: line)
    }
  }

  /// The shuffle order written out from the documentation, independently of the implementation.
  private func referencePermutation(count: Int, seed: UInt64, epoch: Int) -> [Int] {
    var perm = Array(0..<count)
    var g = SplitMix64(seed: derivedSeed(seed, UInt64(epoch)))
    var i = count - 1
    while i >= 1 {
      // Lemire's method, as documented on Dataset.
      let b = UInt64(i + 1)
      var m = g.next().multipliedFullWidth(by: b)
      if m.low < b {
        let t = (0 &- b) % b
        while m.low < t { m = g.next().multipliedFullWidth(by: b) }
      }
      perm.swapAt(i, Int(m.high))
      i -= 1
    }
    return perm
  }

  // MARK: text

  func testTextWindowsInOrderWrapAndValidation() throws {
    // 40 tokens 100...139; validation = last floor(40 * 0.25) = 10 tokens; T = 4.
    let path = try write("small.txt", (0..<40).map { UInt8(100 + $0) })
    let data = try Dataset.load(DataSpec(format: .text, path: path, validationFraction: 0.25, context: 4))
    XCTAssertEqual(data.trainCount, 7)  // (30 - 1) / 4
    XCTAssertEqual(data.validationCount, 2)  // (10 - 1) / 4
    XCTAssertEqual(data.featureCount, 0)

    func window(_ first: Int32) -> (inputs: [Int32], targets: [Int32]) {
      ((0..<4).map { first + $0 }, (1...4).map { first + $0 })
    }
    let b0 = data.trainBatch(step: 0, batchSize: 3, seed: 1, shuffle: false)
    XCTAssertEqual(b0.rows, 3)
    XCTAssertEqual(b0.tokens, window(100).inputs + window(104).inputs + window(108).inputs)
    XCTAssertEqual(b0.targets, window(100).targets + window(104).targets + window(108).targets)
    XCTAssertTrue(b0.features.isEmpty)
    let b1 = data.trainBatch(step: 1, batchSize: 3, seed: 1, shuffle: false)
    XCTAssertEqual(b1.tokens, window(112).inputs + window(116).inputs + window(120).inputs)
    XCTAssertEqual(b1.targets, window(112).targets + window(116).targets + window(120).targets)
    // Step 2: examples 6, 7, 8 = positions 6, 0, 1 (the epoch ends after window 6).
    let b2 = data.trainBatch(step: 2, batchSize: 3, seed: 1, shuffle: false)
    XCTAssertEqual(b2.tokens, window(124).inputs + window(100).inputs + window(104).inputs)
    XCTAssertEqual(b2.targets, window(124).targets + window(100).targets + window(104).targets)
    // The seed does not matter without shuffle.
    XCTAssertEqual(data.trainBatch(step: 2, batchSize: 3, seed: 99, shuffle: false), b2)

    // Validation: tokens 130...139, windows at 130 and 134, in order.
    let all = data.validationBatches(batchSize: 5, limit: nil)
    XCTAssertEqual(all.count, 1)
    XCTAssertEqual(all[0].rows, 2)
    XCTAssertEqual(all[0].tokens, window(130).inputs + window(134).inputs)
    XCTAssertEqual(all[0].targets, window(130).targets + window(134).targets)
    let ones = data.validationBatches(batchSize: 1, limit: nil)
    XCTAssertEqual(ones.map(\.tokens), [window(130).inputs, window(134).inputs])
    XCTAssertEqual(data.validationBatches(batchSize: 1, limit: 1).count, 1)
    XCTAssertEqual(data.validationBatches(batchSize: 1, limit: 0).count, 0)
  }

  func testNoValidationWhenFractionIsZero() throws {
    let path = try write("nine.txt", "abcdefghi")
    let data = try Dataset.load(DataSpec(format: .text, path: path, validationFraction: 0, context: 2))
    XCTAssertEqual(data.trainCount, 4)  // (9 - 1) / 2: the last window ends on the last byte
    XCTAssertEqual(data.validationCount, 0)
    XCTAssertTrue(data.validationBatches(batchSize: 4, limit: nil).isEmpty)
    let b = data.trainBatch(step: 0, batchSize: 1, seed: 0, shuffle: false)
    XCTAssertEqual(b.tokens, [97, 98])
    XCTAssertEqual(b.targets, [98, 99])
    let last = data.trainBatch(step: 3, batchSize: 1, seed: 0, shuffle: false)
    XCTAssertEqual(last.tokens, [103, 104])
    XCTAssertEqual(last.targets, [104, 105])
  }

  func testFortunesLoads() throws {
    let data = try Dataset.load(DataSpec(format: .text, path: Self.fortunesPath, context: 64))
    let n = 2_211_105
    let validation = Int((Double(n) * 0.05).rounded(.down))
    XCTAssertEqual(data.trainCount, (n - validation - 1) / 64)
    XCTAssertEqual(data.validationCount, (validation - 1) / 64)
    let b = data.trainBatch(step: 10, batchSize: 8, seed: 7, shuffle: true)
    XCTAssertEqual(b.tokens.count, 8 * 64)
    XCTAssertEqual(Array(b.tokens[1..<64]), Array(b.targets[0..<63]))
    XCTAssertTrue(b.tokens.allSatisfy { $0 >= 0 && $0 < 128 })  // ASCII
    let h = data.unigramEntropy()
    XCTAssertGreaterThan(h, 2.5)  // English text: about 3 nats per byte
    XCTAssertLessThan(h, 3.5)
  }

  // MARK: shuffle

  func testShuffleVisitsEveryExampleOncePerEpoch() throws {
    // 96 tokens with T = 4: window w starts with token 4w, so a window is known by its first input.
    let path = try write("shuffle.txt", (0..<96).map { UInt8($0) })
    let data = try Dataset.load(DataSpec(format: .text, path: path, validationFraction: 0, context: 4))
    let count = data.trainCount
    XCTAssertEqual(count, 23)
    let batchSize = 5  // does not divide 23: some batches cross an epoch end
    var seen: [Int] = []
    for step in 0..<(3 * count / batchSize + 1) {
      let b = data.trainBatch(step: step, batchSize: batchSize, seed: 42, shuffle: true)
      for i in 0..<b.rows {
        XCTAssertEqual(b.targets[i * 4], b.tokens[i * 4] + 1)
        seen.append(Int(b.tokens[i * 4]) / 4)
      }
    }
    let epochs = (0..<3).map { Array(seen[($0 * count)..<(($0 + 1) * count)]) }
    for (e, order) in epochs.enumerated() {
      XCTAssertEqual(order.sorted(), Array(0..<count), "epoch \(e) is not a permutation")
      XCTAssertEqual(order, referencePermutation(count: count, seed: 42, epoch: e))
    }
    XCTAssertNotEqual(epochs[0], epochs[1])
    XCTAssertNotEqual(epochs[0], Array(0..<count))

    // Pure function of (seed, step): a fresh data set, and steps asked out of order, agree.
    let again = try Dataset.load(DataSpec(format: .text, path: path, validationFraction: 0, context: 4))
    for step in [9, 0, 4, 9, 13] {
      XCTAssertEqual(
        again.trainBatch(step: step, batchSize: batchSize, seed: 42, shuffle: true),
        data.trainBatch(step: step, batchSize: batchSize, seed: 42, shuffle: true))
    }
    // Another seed gives another order.
    let other = (0..<5).flatMap { data.trainBatch(step: $0, batchSize: 5, seed: 43, shuffle: true).tokens }
    let mine = (0..<5).flatMap { data.trainBatch(step: $0, batchSize: 5, seed: 42, shuffle: true).tokens }
    XCTAssertNotEqual(other, mine)
    XCTAssertEqual(other.count, mine.count)
  }

  func testConcurrentModelsGetTheirOwnBatches() throws {
    let path = try write("concurrent.txt", (0..<200).map { UInt8($0) })
    let data = try Dataset.load(DataSpec(format: .text, path: path, validationFraction: 0, context: 3))
    let seeds: [UInt64] = [1, 2, 3, 4]
    let expected = seeds.map { seed in
      (0..<40).map { data.trainBatch(step: $0, batchSize: 7, seed: seed, shuffle: true) }
    }
    let fresh = try Dataset.load(DataSpec(format: .text, path: path, validationFraction: 0, context: 3))
    let results = UnsafeMutableBufferPointer<Bool>.allocate(capacity: seeds.count)
    defer { results.deallocate() }
    DispatchQueue.concurrentPerform(iterations: seeds.count) { k in
      var ok = true
      for step in 0..<40
      where fresh.trainBatch(step: step, batchSize: 7, seed: seeds[k], shuffle: true) != expected[k][step] {
        ok = false
      }
      results[k] = ok
    }
    XCTAssertEqual(Array(results), [true, true, true, true])
  }

  // MARK: tokens

  func testTokensReadLittleEndianUInt16() throws {
    let values: [UInt16] = [0, 1, 300, 65535, 258, 7, 1000, 42, 9]
    let path = try write("tokens.bin", uint16LE(values))
    let data = try Dataset.load(
      DataSpec(format: .tokens, path: path, validationFraction: 0, context: 2, vocab: 65536))
    XCTAssertEqual(data.trainCount, 4)  // (9 - 1) / 2
    let b = data.trainBatch(step: 0, batchSize: 4, seed: 0, shuffle: false)
    XCTAssertEqual(b.tokens, [0, 1, 300, 65535, 258, 7, 1000, 42])
    XCTAssertEqual(b.targets, [1, 300, 65535, 258, 7, 1000, 42, 9])

    // vocab 65535 rejects the token 65535 at index 3.
    assertInputError(
      DataSpec(format: .tokens, path: path, validationFraction: 0, context: 2, vocab: 65535),
      ["tokens.bin", "65535", "index 3"])
    // The largest token fits when the vocabulary is just above it.
    let small = try write("small.bin", uint16LE([3, 1, 2, 0, 4, 1]))
    XCTAssertNoThrow(
      try Dataset.load(DataSpec(format: .tokens, path: small, validationFraction: 0, context: 2, vocab: 5)))
    assertInputError(
      DataSpec(format: .tokens, path: small, validationFraction: 0, context: 2, vocab: 4),
      ["small.bin", "token 4", "index 4"])
  }

  func testTokensOddLengthIsAnError() throws {
    let path = try write("odd.bin", uint16LE([1, 2, 3, 4, 5]) + [7])
    assertInputError(
      DataSpec(format: .tokens, path: path, validationFraction: 0, context: 2), ["odd.bin", "11 bytes", "odd"])
  }

  func testStreamErrors() throws {
    let short = try write("short.txt", "abcd")
    assertInputError(
      DataSpec(format: .text, path: short, validationFraction: 0, context: 4), ["short.txt", "4 tokens", "context 4"])
    XCTAssertNoThrow(try Dataset.load(DataSpec(format: .text, path: short, validationFraction: 0, context: 3)))
    // 20 tokens, 0.1 -> 2 validation tokens: no window of T = 4 there.
    let twenty = try write("twenty.txt", String(repeating: "x", count: 20))
    assertInputError(
      DataSpec(format: .text, path: twenty, validationFraction: 0.1, context: 4),
      ["twenty.txt", "20 tokens", "validation", "context 4"])
    let empty = try write("empty.txt", [UInt8]())
    assertInputError(DataSpec(format: .text, path: empty), ["empty.txt", "empty"])
    assertInputError(DataSpec(format: .tokens, path: empty), ["empty.txt", "empty"])
    assertInputError(
      DataSpec(format: .text, path: tempDir.appendingPathComponent("missing.txt").path),
      ["missing.txt", "no such file"])
    assertInputError(DataSpec(format: .text, path: tempDir.path), [tempDir.lastPathComponent, "directory"])
    assertInputError(DataSpec(format: .text, path: twenty, vocab: 100), ["twenty.txt", "vocab"])
    assertInputError(
      DataSpec(format: .text, path: twenty, validationFraction: 1), ["twenty.txt", "validation fraction"])
    assertInputError(
      DataSpec(format: .text, path: twenty, validationFraction: -0.1), ["twenty.txt", "validation fraction"])
    assertInputError(DataSpec(format: .text, path: twenty, context: 0), ["twenty.txt", "context 0"])
  }

  // MARK: csv

  func testDigits() throws {
    let data = try Dataset.load(
      DataSpec(format: .csv, path: Self.digitsPath, validationFraction: 0, featureScale: 0.0625, classes: 10))
    XCTAssertEqual(data.trainCount, 1797)
    XCTAssertEqual(data.featureCount, 64)
    let all = data.trainBatch(step: 0, batchSize: 1797, seed: 0, shuffle: false)
    XCTAssertEqual(all.features.count, 1797 * 64)
    XCTAssertTrue(all.tokens.isEmpty)
    var perClass = [Int](repeating: 0, count: 10)
    for label in all.targets { perClass[Int(label)] += 1 }
    XCTAssertEqual(perClass, [178, 182, 177, 183, 181, 182, 181, 179, 174, 180])
    XCTAssertTrue(perClass.allSatisfy { $0 > 150 })
    XCTAssertEqual(all.features.min(), 0)
    XCTAssertEqual(all.features.max(), 1)  // grey level 16 * 0.0625
    // First row: 0,0,5,13,9,1,0,0,... label 0; last row ends 12,1,0, label 8.
    XCTAssertEqual(Array(all.features[0..<6]), [0, 0, 5 * 0.0625, 13 * 0.0625, 9 * 0.0625, 0.0625])
    XCTAssertEqual(all.targets.first, 0)
    XCTAssertEqual(Array(all.features[(1797 * 64 - 3)...]), [0.75, 0.0625, 0])
    XCTAssertEqual(all.targets.last, 8)

    let split = try Dataset.load(
      DataSpec(format: .csv, path: Self.digitsPath, validationFraction: 0.1, featureScale: 0.0625, classes: 10))
    XCTAssertEqual(split.validationCount, 179)  // floor(179.7)
    XCTAssertEqual(split.trainCount, 1618)
    let v = split.validationBatches(batchSize: 100, limit: nil)
    XCTAssertEqual(v.map(\.rows), [100, 79])
    XCTAssertEqual(v[1].targets.last, 8)
    XCTAssertEqual(Array(v[0].features[0..<64]), Array(all.features[(1618 * 64)..<(1619 * 64)]))
    XCTAssertEqual(v[0].targets[0], all.targets[1618])
    // Label entropy of the training rows: close to ln 10 for these nearly balanced classes.
    XCTAssertEqual(data.unigramEntropy(), log(10), accuracy: 0.001)
  }

  func testPlainAndGzipCSVLoadIdentically() throws {
    let text = "a, b, c ,label\n1,2,3,0\n 4 ,\t5.5, -6e1 ,2\r\n7,8,9,1\n10,11,12,2\n\n  \n"
    let plain = try write("table.csv", text)
    let gz = try writeGzip("table.csv.gz", Array(text.utf8))
    let noSuffix = try writeGzip("table-gzipped.csv", Array(text.utf8))
    func load(_ path: String) throws -> Dataset {
      try Dataset.load(
        DataSpec(format: .csv, path: path, validationFraction: 0.25, featureScale: 0.5, header: true, classes: 3))
    }
    let reference = try load(plain)
    XCTAssertEqual(reference.trainCount, 3)
    XCTAssertEqual(reference.validationCount, 1)
    XCTAssertEqual(reference.featureCount, 3)
    let train = reference.trainBatch(step: 0, batchSize: 3, seed: 0, shuffle: false)
    XCTAssertEqual(train.features, [0.5, 1, 1.5, 2, 2.75, -30, 3.5, 4, 4.5])
    XCTAssertEqual(train.targets, [0, 2, 1])
    let validation = reference.validationBatches(batchSize: 8, limit: nil)
    XCTAssertEqual(validation.count, 1)
    XCTAssertEqual(validation[0].features, [5, 5.5, 6])
    XCTAssertEqual(validation[0].targets, [2])
    for path in [gz, noSuffix] {
      let other = try load(path)
      XCTAssertEqual(other.trainCount, 3)
      XCTAssertEqual(other.trainBatch(step: 0, batchSize: 3, seed: 0, shuffle: false), train)
      XCTAssertEqual(other.validationBatches(batchSize: 8, limit: nil), validation)
      XCTAssertEqual(
        other.trainBatch(step: 5, batchSize: 2, seed: 9, shuffle: true),
        reference.trainBatch(step: 5, batchSize: 2, seed: 9, shuffle: true))
    }
    // The label in the first column.
    let first = try Dataset.load(
      DataSpec(format: .csv, path: plain, validationFraction: 0, labelColumn: 0, header: true, classes: 11))
    let b = first.trainBatch(step: 0, batchSize: 2, seed: 0, shuffle: false)
    XCTAssertEqual(b.targets, [1, 4])
    XCTAssertEqual(b.features, [2, 3, 0, 5.5, -60, 2])
  }

  func testCSVErrorsNameFileLineAndColumn() throws {
    func spec(_ path: String, classes: Int = 3, label: Int = -1, header: Bool = false) -> DataSpec {
      DataSpec(format: .csv, path: path, validationFraction: 0, labelColumn: label, header: header, classes: classes)
    }
    let notNumber = try write("digits.csv", "1,2,0\n3,4,1\n5,x1,2\n")
    assertInputError(spec(notNumber), ["digits.csv:3: column 2: \"x1\" is not a number"])
    let nanCell = try write("nan.csv", "1,2,0\nnan,4,1\n")
    assertInputError(spec(nanCell), ["nan.csv:2: column 1", "\"nan\" is not a number"])
    // Finite as a Double, infinite as a Float: refused rather than diverging at step 0.
    let huge = try write("huge.csv", "1,2,0\n1e39,4,1\n")
    assertInputError(spec(huge), ["huge.csv:2: column 1", "\"1e39\"", "not finite as a 32-bit float"])
    let emptyCell = try write("emptycell.csv", "1,,0\n")
    assertInputError(spec(emptyCell), ["emptycell.csv:1: column 2", "\"\" is not a number"])
    let ragged = try write("ragged.csv", "h1,h2,h3\n1,2,0\n3,4,5,1\n")
    assertInputError(spec(ragged, header: true), ["ragged.csv:3:", "4 columns", "first row has 3"])
    let fractional = try write("fraction.csv", "1,2,0\n3,4,1.5\n")
    assertInputError(spec(fractional), ["fraction.csv:2: column 3", "\"1.5\" is not an integer"])
    let outOfRange = try write("range.csv", "1,2,0\n3,4,1\n5,6,3\n")
    assertInputError(spec(outOfRange), ["range.csv:3: column 3", "label 3", "0..<3"])
    let negative = try write("negative.csv", "-1,2,0\n3,4,-1\n")
    assertInputError(spec(negative, classes: 0), ["negative.csv:2: column 3", "label -1"])
    let labelFirst = try write("labelfirst.csv", "0,2,3\n7,4,5\n")
    assertInputError(spec(labelFirst, label: 0), ["labelfirst.csv:2: column 1", "label 7"])
    let blank = try write("blank.csv", "1,2,0\n\n3,4,1\n")
    assertInputError(spec(blank), ["blank.csv:2:", "blank line"])
    let noColumn = try write("nocolumn.csv", "1,2,0\n")
    assertInputError(spec(noColumn, label: 3), ["nocolumn.csv:1:", "label column 3"])
    assertInputError(spec(noColumn, label: -4), ["nocolumn.csv:1:", "label column -4"])
    let single = try write("single.csv", "1\n2\n")
    assertInputError(spec(single), ["single.csv:1:", "1 column"])
    let empty = try write("empty.csv", "\n \n")
    assertInputError(spec(empty), ["empty.csv", "empty"])
    let headerOnly = try write("header.csv", "a,b,c\n")
    assertInputError(spec(headerOnly, header: true), ["header.csv", "no data rows"])
    let oneRow = try write("onerow.csv", "1,2,0\n")
    assertInputError(
      DataSpec(format: .csv, path: oneRow, validationFraction: 0.5, classes: 3), ["onerow.csv", "no validation row"])
    assertInputError(spec(tempDir.appendingPathComponent("absent.csv").path), ["absent.csv", "no such file"])
  }

  func testCorruptGzipIsAnInputError() throws {
    let original = try [UInt8](Data(contentsOf: URL(fileURLWithPath: Self.digitsPath)))
    let truncated = try write("truncated.csv.gz", Array(original[0..<(original.count / 2)]))
    assertInputError(DataSpec(format: .csv, path: truncated, classes: 10), ["truncated.csv.gz", "gzip"])
    var flipped = original
    for k in stride(from: 1000, to: 1100, by: 1) { flipped[k] ^= 0x5A }
    let damaged = try write("damaged.csv.gz", flipped)
    assertInputError(DataSpec(format: .csv, path: damaged, classes: 10), ["damaged.csv.gz", "gzip"])
    let fake = try write("fake.csv.gz", "1,2,0\n")
    assertInputError(DataSpec(format: .csv, path: fake, classes: 10), ["fake.csv.gz", "gzip"])
  }

  // MARK: entropy and robustness

  func testUnigramEntropyFromKnownCounts() throws {
    // 12 bytes, validation = last 4 ("zzzz"): training counts a 2, b 4, c 2 of 8.
    let path = try write("counts.txt", "aabbbbcczzzz")
    let data = try Dataset.load(DataSpec(format: .text, path: path, validationFraction: 0.34, context: 2))
    let expected = -(2 * 0.25 * log(0.25) + 0.5 * log(0.5))  // 1.0397...
    XCTAssertEqual(data.unigramEntropy(), expected, accuracy: 1e-12)
    let tokens = try write("counts.bin", uint16LE([500, 500, 500, 7, 9, 9]))
    let t = try Dataset.load(DataSpec(format: .tokens, path: tokens, validationFraction: 0, context: 2, vocab: 501))
    XCTAssertEqual(
      t.unigramEntropy(), -(0.5 * log(0.5) + (1.0 / 6) * log(1.0 / 6) + (1.0 / 3) * log(1.0 / 3)), accuracy: 1e-12)
  }

  func testRandomFilesNeverTrap() throws {
    var g = SplitMix64(seed: 2024)
    let alphabet = Array("0123456789,.-+ e\n\r\tx".utf8)
    for k in 0..<150 {
      let length = g.nextInt(below: 200)
      let bytes: [UInt8] = (0..<length).map { _ in
        k % 2 == 0 ? alphabet[g.nextInt(below: alphabet.count)] : UInt8(truncatingIfNeeded: g.next())
      }
      let path = try write("random\(k).dat", bytes)
      for format in [DataFormat.text, .tokens, .csv] {
        let spec = DataSpec(
          format: format, path: path, validationFraction: 0.2, context: 3, vocab: 300, classes: 5)
        do {
          let data = try Dataset.load(spec)
          _ = data.trainBatch(step: 3, batchSize: 4, seed: 1, shuffle: true)
          _ = data.validationBatches(batchSize: 2, limit: nil)
          _ = data.unigramEntropy()
        } catch is InputError {
        } catch {
          XCTFail("\(format) on random file \(k): \(error) is not an InputError")
        }
      }
    }
  }
}
