# Install the build tree at BUILD_DIR into STAGING, then move the result to DESTINATION: the find_package consumer
# configures against DESTINATION, which proves the package has no absolute path of the place it was installed to.
foreach(_var BUILD_DIR STAGING DESTINATION)
  if(NOT DEFINED ${_var})
    message(FATAL_ERROR "install_and_move.cmake: -D${_var}=... is required")
  endif()
endforeach()

file(REMOVE_RECURSE "${STAGING}" "${DESTINATION}")
execute_process(COMMAND "${CMAKE_COMMAND}" --install "${BUILD_DIR}" --prefix "${STAGING}"
                RESULT_VARIABLE _rc OUTPUT_QUIET)
if(NOT _rc EQUAL 0)
  message(FATAL_ERROR "cmake --install failed (${_rc})")
endif()
file(RENAME "${STAGING}" "${DESTINATION}")

file(GLOB_RECURSE _config_files "${DESTINATION}/*.cmake")
if(NOT _config_files)
  message(FATAL_ERROR "the install has no CMake package files")
endif()
foreach(_file IN LISTS _config_files)
  file(READ "${_file}" _text)
  string(FIND "${_text}" "${STAGING}" _at)
  if(NOT _at EQUAL -1)
    message(FATAL_ERROR "${_file} refers to the install prefix ${STAGING}: the package is not relocatable")
  endif()
endforeach()
message(STATUS "installed to ${STAGING}, moved to ${DESTINATION}")
