# Pack the library's source distribution (what a release tarball holds: no tests, examples or build trees) into
# ARCHIVE as sageptq-VERSION/..., and remove STALE_DIR, the FetchContent consumer's build, so it fetches afresh.
foreach(_var SOURCE_DIR VERSION ARCHIVE STALE_DIR)
  if(NOT DEFINED ${_var})
    message(FATAL_ERROR "make_archive.cmake: -D${_var}=... is required")
  endif()
endforeach()

get_filename_component(_work "${ARCHIVE}" DIRECTORY)
set(_root "${_work}/archive-staging/sageptq-${VERSION}")
file(REMOVE_RECURSE "${_work}/archive-staging" "${ARCHIVE}" "${STALE_DIR}")
file(MAKE_DIRECTORY "${_root}")
foreach(_item CMakeLists.txt cmake include LICENSE THIRD_PARTY_NOTICES.md CHANGELOG.md README.md)
  if(EXISTS "${SOURCE_DIR}/${_item}")
    file(COPY "${SOURCE_DIR}/${_item}" DESTINATION "${_root}")
  endif()
endforeach()
execute_process(COMMAND "${CMAKE_COMMAND}" -E tar czf "${ARCHIVE}" "sageptq-${VERSION}"
                WORKING_DIRECTORY "${_work}/archive-staging" RESULT_VARIABLE _rc)
if(NOT _rc EQUAL 0)
  message(FATAL_ERROR "could not create ${ARCHIVE}")
endif()
file(REMOVE_RECURSE "${_work}/archive-staging")
