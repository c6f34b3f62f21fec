package sqlstore

// RegisterSealed lets the key ring's tests register a table of their own.
var RegisterSealed = registerSealed
