// Package certstest provides an in-memory certificate authority for tests:
// ready-to-use Stores, and certificates with arbitrary (including invalid)
// properties for negative tests of the mTLS checks.
//
// Create a CA inside a testing/synctest bubble when the test runs in one: the
// bubble's clock starts in the year 2000, and certificates made outside it
// would not be valid yet inside.
package certstest
