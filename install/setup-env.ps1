<#
.SYNOPSIS
    One command per backend on Windows: create (or update) the conda environment for a backend, install
    tortoise-xpu into it, and check with `tortoise-xpu devices --json` that the backend is usable there.

.DESCRIPTION
    The PowerShell twin of install/setup-env.sh, for the backends that exist on Windows: directml, xpu,
    cuda, cpu and auto (the repository's environment.yml).

    Idempotent: after a successful run it stores a stamp (a hash of the environment file, pyproject.toml,
    the extras and the package version) in <env>\etc\tortoise-xpu\setup-env.stamp; when a later run
    finds the same stamp and the package installed from this checkout, it changes nothing and says so.
    Creating/updating the environment and installing the package need network access.

    Exit status: 0 ready and the backend is available; 3 ready but the backend is not available here
    (the reason is printed); 2 bad usage or wrong platform; 1 any other failure.

.EXAMPLE
    install\setup-env.ps1 -Backend directml
.EXAMPLE
    install\setup-env.ps1 -Backend xpu -Python 3.12 -DryRun
#>
[CmdletBinding()]
param(
    [ValidateSet('auto', 'cpu', 'cuda', 'rocm', 'xpu', 'mps', 'directml')]
    [string]$Backend = 'auto',
    # Environment name (default: the file's `name:`).
    [string]$Name = '',
    # Use this Python (e.g. 3.12) instead of the file's pin.
    [string]$Python = '',
    # With -Backend xpu: the LEGACY torch 2.8 + IPEX stack (backends\xpu\environment-ipex.yml).
    [switch]$Ipex,
    # conda, mamba or micromamba (default: the first one found, in that order, or $env:TORTOISE_CONDA).
    [string]$Tool = $env:TORTOISE_CONDA,
    # Update the environment and reinstall the package even when nothing changed.
    [switch]$Force,
    # Set up a backend on an OS it does not support.
    [switch]$IgnorePlatform,
    # Print the environment file and the commands; change nothing.
    [switch]$DryRun
)

Set-StrictMode -Version 3
$ErrorActionPreference = 'Stop'

function Fail([int]$Code, [string]$Message) {
    [Console]::Error.WriteLine("error: $Message")
    exit $Code
}
function Warn([string]$Message) { [Console]::Error.WriteLine("warning: $Message") }

$Repo = (Resolve-Path (Join-Path $PSScriptRoot '..')).Path
$Helper = Join-Path $Repo 'install\setup_env_helper.py'

# --- which OS, and does the backend exist there? -----------------------------------------------------
if ($PSVersionTable.PSEdition -eq 'Desktop' -or $IsWindows) { $OS = 'windows' }
elseif ($IsMacOS) { $OS = 'macos' }
else { $OS = 'linux' }
$Platforms = @{
    auto = @('windows', 'linux', 'macos'); cpu = @('windows', 'linux', 'macos'); cuda = @('windows', 'linux')
    xpu = @('windows', 'linux'); rocm = @('linux'); mps = @('macos'); directml = @('windows', 'linux')
}
if ($Platforms[$Backend] -notcontains $OS) {
    $msg = "the $Backend backend needs $($Platforms[$Backend] -join ' or '), this is $OS"
    if ($DryRun -or $IgnorePlatform) { Warn $msg } else { Fail 2 "$msg (pass -IgnorePlatform to set it up anyway)" }
}
if ($Ipex -and $Backend -ne 'xpu') { Fail 2 '-Ipex goes with -Backend xpu' }
if ($Python -and $Python -notmatch '^3\.\d+(\.\d+)?$') { Fail 2 "-Python wants a version like 3.11, not '$Python'" }

# --- the environment file ----------------------------------------------------------------------------
$Extras = ''
if ($Backend -eq 'auto') { $EnvFile = Join-Path $Repo 'environment.yml' }
elseif ($Ipex) { $EnvFile = Join-Path $Repo 'install\envs\xpu\environment-ipex.yml'; $Extras = 'ipex' }
else { $EnvFile = Join-Path $Repo "install\envs\$Backend\environment.yml" }
if ($Backend -eq 'directml') { $Extras = 'directml' }
if (-not (Test-Path $EnvFile)) { Fail 1 "missing environment file $EnvFile" }

$EnvText = Get-Content -Raw -Path $EnvFile
if (-not $Name) {
    $m = [regex]::Match($EnvText, '(?m)^name:\s*(\S+)')
    if (-not $m.Success) { Fail 1 "$EnvFile has no 'name:' and no -Name was given" }
    $Name = $m.Groups[1].Value.Trim('"', "'")
}
$Effective = $EnvFile
if ($Python) {
    $pattern = '(?m)^(\s*-\s*python)([=<>!~ ][^\r\n]*)?(?=\r?$)'  # CRLF checkouts too
    if (-not [regex]::IsMatch($EnvText, $pattern)) { Fail 1 "$EnvFile has no '- python=...' line to replace" }
    $EnvText = [regex]::Replace($EnvText, $pattern, "`${1}=$Python")
    $Effective = Join-Path ([IO.Path]::GetTempPath()) "tortoise-xpu-$Name-environment.yml"
    [IO.File]::WriteAllText($Effective, $EnvText)  # UTF-8 without a byte-order mark
}

$Pyproject = Get-Content -Raw -Path (Join-Path $Repo 'pyproject.toml')
$PkgVersion = [regex]::Match($Pyproject, '(?m)^version\s*=\s*"([^"]+)"').Groups[1].Value
$StampInput = "backend=$Backend`nextras=$Extras`npackage_version=$PkgVersion`n--- environment file`n$EnvText--- pyproject.toml`n$Pyproject"
$Sha = [System.Security.Cryptography.SHA256]::Create()
$Stamp = -join ($Sha.ComputeHash([Text.Encoding]::UTF8.GetBytes($StampInput)) | ForEach-Object { $_.ToString('x2') })
$PipTarget = if ($Extras) { $Repo + '[' + $Extras + ']' } else { $Repo }
$StampRel = 'etc\tortoise-xpu\setup-env.stamp'

# --- the conda-like tool ----------------------------------------------------------------------------
$ToolFound = $true
if ($Tool) {
    if (-not (Get-Command $Tool -ErrorAction SilentlyContinue)) { Fail 1 "-Tool/TORTOISE_CONDA '$Tool' is not on PATH" }
} else {
    foreach ($candidate in 'conda', 'mamba', 'micromamba') {
        if (Get-Command $candidate -ErrorAction SilentlyContinue) { $Tool = $candidate; break }
    }
}
if (-not $Tool) {
    $msg = 'no conda, mamba or micromamba found: install Miniforge (https://conda-forge.org/download/) or micromamba, open a new terminal, and run this again'
    if (-not $DryRun) { Fail 1 $msg }
    Warn "$msg (showing conda commands)"
    $Tool = 'conda'; $ToolFound = $false
}
$Kind = [IO.Path]::GetFileNameWithoutExtension($Tool)

function Get-CreateArgs { if ($Kind -eq 'micromamba') { @('create', '-y', '-n', $Name, '-f', $Effective) } else { @('env', 'create', '-n', $Name, '-f', $Effective) } }
function Get-UpdateArgs { if ($Kind -eq 'micromamba') { @('install', '-y', '-n', $Name, '-f', $Effective) } else { @('env', 'update', '-n', $Name, '-f', $Effective, '--prune') } }
function Get-RunArgs { if ($Kind -eq 'conda') { @('run', '--no-capture-output', '-n', $Name) } else { @('run', '-n', $Name) } }
function Show([string[]]$Words) {
    ($Words | ForEach-Object { if ($_ -match '[\s''"&|<>()]' -or $_ -eq '') { "'" + ($_ -replace "'", "''") + "'" } else { $_ } }) -join ' '
}
# Run in the environment, output to the console; returns only the exit code. ('Continue': Windows
# PowerShell 5.1 turns a native command's stderr into errors that 'Stop' would throw.)
function Invoke-InEnv([string[]]$Words) {
    $ErrorActionPreference = 'Continue'
    $runArgs = (Get-RunArgs) + $Words
    & $Tool @runArgs | Out-Host
    return $LASTEXITCODE
}

# --- what is there now ------------------------------------------------------------------------------
$EnvExists = $false; $Prefix = ''; $PkgLoc = ''; $OldStamp = ''
function Read-Env {
    $ErrorActionPreference = 'Continue'
    $script:EnvExists = $false
    $runArgs = (Get-RunArgs) + @('python', $Helper, 'probe')
    $out = @(& $Tool @runArgs 2>$null)
    if ($LASTEXITCODE -eq 0 -and $out.Count -ge 1 -and $out[0]) {
        $script:EnvExists = $true
        $script:Prefix = "$($out[0])".Trim()
        $script:PkgLoc = if ($out.Count -ge 2) { "$($out[1])".Trim() } else { '' }
        $stampFile = Join-Path $script:Prefix $StampRel
        $script:OldStamp = ''
        if (Test-Path $stampFile) {
            $line = Get-Content $stampFile | Where-Object { $_ -like 'stamp=*' } | Select-Object -First 1
            if ($line) { $script:OldStamp = $line.Substring(6) }
        }
    }
}
if ($ToolFound) { Read-Env }

$Action = 'create'
if ($EnvExists) {
    $Action = 'update'
    if (-not $Force -and $OldStamp -eq $Stamp -and $PkgLoc -eq $Repo) { $Action = 'none' }
}

Write-Output "backend:          $Backend"
Write-Output ("environment:      $Name" + $(if ($EnvExists) { " (exists at $Prefix)" } elseif ($ToolFound) { ' (does not exist yet)' } else { '' }))
Write-Output ("environment file: $EnvFile" + $(if ($Python) { " (with python=$Python)" } else { '' }))
Write-Output "tool:             $Tool"
Write-Output ("package:          tortoise-xpu $PkgVersion from $Repo" + $(if ($Extras) { " (extras: $Extras)" } else { '' }))
Write-Output "stamp:            $Stamp"

if ($DryRun) {
    Write-Output ''
    Write-Output "--- $Effective"
    Write-Output $EnvText.TrimEnd()
    Write-Output '---'
    Write-Output ''
    Write-Output 'Plan (dry run: nothing is changed):'
    if ($Action -eq 'none') {
        Write-Output "  nothing to change: $Name already matches this environment file and package (same stamp)"
    } else {
        $envArgs = if ($Action -eq 'create') { Get-CreateArgs } else { Get-UpdateArgs }
        Write-Output ('  [network] ' + (Show (@($Tool) + $envArgs)))
        Write-Output ('  [network] ' + (Show (@($Tool) + (Get-RunArgs) + @('python', '-m', 'pip', 'install', '-e', $PipTarget))))
        Write-Output "            write <env>\$StampRel (stamp=$Stamp)"
    }
    Write-Output ('            ' + (Show (@($Tool) + (Get-RunArgs) + @('tortoise-xpu', 'devices', '--json'))) + "   # is the $Backend backend available?")
    exit 0
}

# --- create or update -------------------------------------------------------------------------------
if ($Action -eq 'none') {
    Write-Output "nothing changed: environment $Name already matches $(Split-Path -Leaf $EnvFile) and tortoise-xpu $PkgVersion (stamp $($Stamp.Substring(0, 12)))"
} else {
    $envArgs = if ($Action -eq 'create') { Get-CreateArgs } else { Get-UpdateArgs }
    Write-Output "$(if ($Action -eq 'create') { 'creating' } else { 'updating' }) environment $Name (needs network) ..."
    Write-Output ('+ ' + (Show (@($Tool) + $envArgs)))
    $ErrorActionPreference = 'Continue'
    & $Tool @envArgs | Out-Host
    $ErrorActionPreference = 'Stop'
    if ($LASTEXITCODE -ne 0) { Fail 1 "$Action of environment $Name failed (see the $Kind output above)" }
    Read-Env
    if (-not $EnvExists) { Fail 1 "environment $Name still cannot run python after $Action" }
    $pipArgs = @('python', '-m', 'pip', 'install', '-e', $PipTarget)
    Write-Output ('+ ' + (Show (@($Tool) + (Get-RunArgs) + $pipArgs)))
    if ((Invoke-InEnv $pipArgs) -ne 0) { Fail 1 "pip install -e $PipTarget failed in $Name (see above)" }
    $stampFile = Join-Path $Prefix $StampRel
    New-Item -ItemType Directory -Force -Path (Split-Path -Parent $stampFile) | Out-Null
    @("stamp=$Stamp", "backend=$Backend", "env_file=$EnvFile", "python=$(if ($Python) { $Python } else { 'from file' })",
      "extras=$Extras", "package_version=$PkgVersion", "repo=$Repo") | Set-Content -Path $stampFile -Encoding UTF8
    Write-Output "changed: $(if ($Action -eq 'create') { 'created' } else { 'updated' }) environment $Name and installed tortoise-xpu $PkgVersion"
}

# --- is the backend usable there? -------------------------------------------------------------------
Write-Output ('+ ' + (Show (@($Tool) + (Get-RunArgs) + @('tortoise-xpu', 'devices', '--json'))))
$rc = Invoke-InEnv @('python', $Helper, 'check', $Backend)
switch ($rc) {
    0 { Write-Output "ready: conda activate $Name" }
    3 {
        $hint = if ($Backend -eq 'auto') { 'docs\install.md' } else { "backends\$Backend\README.md" }
        Write-Output "environment $Name is ready, but the $Backend backend is not available on this machine: see $hint for what it needs"
    }
    default { Fail 1 "could not check the $Backend backend in $Name (see above)" }
}
exit $rc
