# ctest entries for the fuzz targets, included by tests/CMakeLists.txt in the main (g++) build.
# Each entry runs scripts/fuzz.sh, which builds the clang targets into build-fuzz/ (once, then
# incrementally; a lock serialises concurrent builds) and fuzzes one target over its committed
# corpus, regression inputs included. Exit code 77 (no clang fuzzer runtime) is a skip.
#   label unit: 5 s per target, so the default run replays every regression input and fuzzes
#               a little; label fuzz: 60 s per target.
file(GLOB ALEM_FUZZ_TARGET_SOURCES CONFIGURE_DEPENDS ${CMAKE_CURRENT_LIST_DIR}/fuzz_*.cc)
foreach(src IN LISTS ALEM_FUZZ_TARGET_SOURCES)
  get_filename_component(name ${src} NAME_WE)
  string(REGEX REPLACE "^fuzz_" "" short ${name})
  foreach(kind short long)
    if(kind STREQUAL "short")
      set(test_name fuzz_${short}_short)
      set(seconds 5)
      set(label unit)
    else()
      set(test_name fuzz_${short})
      set(seconds 60)
      set(label fuzz)
    endif()
    add_test(NAME ${test_name} COMMAND bash ${CMAKE_SOURCE_DIR}/scripts/fuzz.sh --ctest ${seconds}
                                       ${short}
             WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
    # The first test to run also builds build-fuzz/ (a few minutes on 2 cores).
    set_tests_properties(${test_name} PROPERTIES LABELS ${label} SKIP_RETURN_CODE 77
                         TIMEOUT 1800)
  endforeach()
endforeach()
