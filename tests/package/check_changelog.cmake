# CHANGELOG.md must have a "## [VERSION]" heading for the version in version.hpp.
file(READ "${CHANGELOG}" _text)
string(REPLACE "." "\\." _escaped "${VERSION}")
if(NOT _text MATCHES "\n## \\[${_escaped}\\]")
  message(FATAL_ERROR "${CHANGELOG} has no '## [${VERSION}]' entry for the version in include/sageptq/version.hpp")
endif()
