# Compile one .cu file with nvcc for one architecture, keep the ptxas -v report, and fail on register spills.
#
#   cmake -DNVCC=... -DSOURCE=x.cu -DARCH=90 -DINCLUDE_DIRS=a;b -DLOG=x.sm_90.ptxas.txt -DOBJECT=x.sm_90.o
#         [-DHOST_COMPILER=g++] [-DWERROR=ON] [-DSPILL_CHECK=ON] -P nvcc_check.cmake
#
# Used by tests/headers: device code is compiled on every CI run although CI has no GPU. The spill check reads the
# ptxas report: a kernel that spills registers to local memory is a performance bug we want to see at once.

foreach(_var NVCC SOURCE ARCH INCLUDE_DIRS LOG OBJECT)
  if(NOT DEFINED ${_var})
    message(FATAL_ERROR "nvcc_check.cmake: -D${_var}=... is required")
  endif()
endforeach()

set(_command "${NVCC}" -std=c++20 "-arch=sm_${ARCH}" -Xptxas=-v -c "${SOURCE}" -o "${OBJECT}")
foreach(_dir IN LISTS INCLUDE_DIRS)
  list(APPEND _command "-I${_dir}")
endforeach()
if(HOST_COMPILER)
  list(APPEND _command -ccbin "${HOST_COMPILER}")
endif()
if(WERROR)
  # nvcc's own diagnostics become errors. The host pass is not held to -Werror: g++ sees nvcc's rewritten host
  # code (e.g. member pointers gain parentheses, -Wparentheses), and the plain C++ builds already check that code.
  list(APPEND _command -Werror all-warnings)
endif()

get_filename_component(_object_dir "${OBJECT}" DIRECTORY)
file(MAKE_DIRECTORY "${_object_dir}")
execute_process(COMMAND ${_command} RESULT_VARIABLE _rc OUTPUT_VARIABLE _out ERROR_VARIABLE _err)
list(JOIN _command " " _command_line)
file(WRITE "${LOG}" "${_command_line}\n${_out}${_err}")
if(NOT _rc EQUAL 0)
  message(FATAL_ERROR "nvcc failed for ${SOURCE} (sm_${ARCH}):\n${_out}${_err}")
endif()

if(SPILL_CHECK)
  # ptxas prints "Function properties for <mangled name>" and then "... N bytes spill stores, M bytes spill loads".
  string(REGEX MATCHALL "Function properties for [^\n]+\n[^\n]*[1-9][0-9]* bytes spill stores" _spills "${_err}")
  if(_spills)
    message(FATAL_ERROR "register spills in ${SOURCE} (sm_${ARCH}); report kept in ${LOG}:\n${_spills}")
  endif()
endif()
